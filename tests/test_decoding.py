"""Decoding: top-k sampling, generate_topk, safebeam_select, beam search, SafeBeam and the decoder
registry on models with known answers.

    python -m pytest tests/test_decoding.py -q
"""

import math
from types import SimpleNamespace

import pytest
import torch
from decoding_toy import EOS, PAD, TAG, A, B, BigramToy, S, X, Y

from safepretrain.config import ModelConfig
from safepretrain.config.evaluation import TopKConfig
from safepretrain.eval.decoders import (
    DECODERS,
    beam_search,
    decode,
    generate_topk,
    safe_beam_search,
    safebeam_select,
    sample_next_token,
)
from safepretrain.eval.decoders.topk import penalised
from safepretrain.train.model import Transformer

# ----------------------------------------------------------------------------- the toy DecoderModel
# (decoding_toy.py): a bigram table, so every beam's score and every lookahead p(tag) can be worked out by hand.
# From S the likely continuation A leads where the tag is likely next (p_tag(S A) = 0.15); the less
# likely B is tag-free. Plain beam search therefore answers "A X", SafeBeam "B Y".
#   A X EOS: 0.55 · 0.80 · 0.9 = 0.396   vs   B Y EOS: 0.40 · 0.6 · 0.99 = 0.238
FORK = {
    S: {A: 0.55, B: 0.40, EOS: 0.05},
    A: {X: 0.80, TAG: 0.15, EOS: 0.05},
    B: {Y: 0.60, EOS: 0.40},
    X: {EOS: 0.90, TAG: 0.10},
    Y: {EOS: 0.99, X: 0.01},
    TAG: {X: 1.0},
    EOS: {EOS: 1.0},
}


def beam(model, prompts=((S,),), **kw):
    args = dict(tag_id=TAG, beam_size=2, candidates_per_beam=2, max_new_tokens=6, stop_ids={EOS}, pad_id=PAD)
    return safe_beam_search(model, [list(p) for p in prompts], **{**args, **kw})


def test_plain_beam_search_takes_the_likely_unsafe_path():
    g = beam(BigramToy(FORK), drop_fraction=0.0)[0]
    assert g.tokens == [A, X] and g.stopped == "stop"
    assert g.logprob == pytest.approx(math.log(0.55 * 0.8 * 0.9), abs=1e-5)
    assert not g.short_circuited and not g.tag_emitted


def test_safebeam_drops_the_tag_prone_branch():
    g = beam(BigramToy(FORK), drop_fraction=0.5)[0]
    assert g.tokens == [B, Y] and g.stopped == "stop"
    assert g.logprob == pytest.approx(math.log(0.40 * 0.6 * 0.99), abs=1e-5)


def test_one_batched_lookahead_per_step_over_one_cache_row_per_beam():
    model = BigramToy(FORK)
    beam(model, prompts=[(S,), (S,), (B,)], drop_fraction=0.5)
    # 3 prompts × 2 beams, 2 candidates each as tree queries over their beam's row: 6 cache rows, not 12;
    # finished prompts leave the batch (the "B" prompt ends first)
    assert model.candidate_rows[0] == (6, 2) and len(model.candidate_rows) <= 6 and model.decode_rows == []
    assert max(model.cache_rows) == 6
    assert model.candidate_rows == sorted(model.candidate_rows, reverse=True)


def test_plain_beam_is_textbook_one_cache_row_per_beam():
    model = BigramToy(FORK)
    gens = beam_search(model, [[S], [S], [B]], beam_size=2, candidates_per_beam=4, max_new_tokens=6,
                       stop_ids={EOS}, pad_id=PAD)
    assert [g.tokens for g in gens] == [[A, X], [A, X], [Y]]
    # no lookahead: one forward of the survivors per step, 2 rows per prompt whatever candidates_per_beam is
    assert model.candidate_rows == [] and model.decode_rows[0] == 6 and max(model.cache_rows) == 6


def test_short_circuit_when_the_tag_is_the_best_kept_candidate():
    # From S the tag is the most likely token; what follows the tag is tag-free, what follows A or B
    # is tag-prone, so the 50% drop removes A and keeps the tag.
    table = {S: {TAG: 0.6, A: 0.3, B: 0.1}, TAG: {X: 1.0}, A: {TAG: 0.9, X: 0.1}, B: {TAG: 0.9, Y: 0.1},
             X: {EOS: 1.0}, Y: {EOS: 1.0}, EOS: {EOS: 1.0}}
    g = beam(BigramToy(table), beam_size=1)[0]
    assert g.tokens == [TAG] and g.stopped == "tag" and g.short_circuited and g.tag_emitted
    assert g.logprob == pytest.approx(math.log(0.6), abs=1e-5)
    g = beam(BigramToy(table), beam_size=1, short_circuit=False)[0]
    assert g.tokens == [TAG, X] and g.stopped == "stop" and not g.short_circuited and g.tag_emitted


def test_length_stop_and_length_penalty():
    loop = {S: {A: 0.6, EOS: 0.4}, A: {A: 0.6, EOS: 0.4}, EOS: {EOS: 1.0}}
    # raw log-prob (the default) prefers the immediate EOS (log 0.4 = -0.92 > 4 log 0.6 = -2.04);
    # per token (penalty 1) the answer cut at max_new_tokens (-2.04 / 4 = -0.51)
    short = beam(BigramToy(loop), drop_fraction=0.0, max_new_tokens=4)[0]
    assert short.tokens == [] and short.stopped == "stop"
    long = beam(BigramToy(loop), drop_fraction=0.0, max_new_tokens=4, length_penalty=1.0)[0]
    assert long.tokens == [A] * 4 and long.stopped == "length"


# Two answers that both end at EOS: "X" is the more likely whole answer, "A B Y" the more likely per
# token, so the paper's raw log-prob and the length-normalised score pick different hypotheses.
#   X EOS:     0.5 · 0.6             = 0.300  (log -1.20, per token -1.20)
#   A B Y EOS: 0.5 · 0.8 · 0.7 · 0.8 = 0.224  (log -1.50, per token -0.50)
# Every other finished hypothesis is worse on both scores (e.g. A B EOS = 0.12, X Y EOS = 0.16).
SHORT_OR_LONG = {
    S: {X: 0.5, A: 0.5},
    X: {EOS: 0.6, Y: 0.4},
    A: {B: 0.8, EOS: 0.2},
    B: {Y: 0.7, EOS: 0.3},
    Y: {EOS: 0.8, X: 0.2},
    EOS: {EOS: 1.0},
}


@pytest.mark.parametrize("search", ["beam", "safebeam"])
def test_final_pick_is_raw_logprob_by_default_and_normalised_on_request(search):
    def run(**kw):
        args = dict(beam_size=2, candidates_per_beam=2, max_new_tokens=8, stop_ids={EOS}, pad_id=PAD, **kw)
        if search == "beam":
            return beam_search(BigramToy(SHORT_OR_LONG), [[S]], tag_id=TAG, **args)[0]
        return safe_beam_search(BigramToy(SHORT_OR_LONG), [[S]], tag_id=TAG, drop_fraction=0.0, **args)[0]

    raw = run()
    assert raw.tokens == [X] and raw.stopped == "stop"
    assert raw.logprob == pytest.approx(math.log(0.5 * 0.6), abs=1e-5)
    normalised = run(length_penalty=1.0)
    assert normalised.tokens == [A, B, Y] and normalised.stopped == "stop"
    assert normalised.logprob == pytest.approx(math.log(0.5 * 0.8 * 0.7 * 0.8), abs=1e-5)


# The likely path from S goes through the tag (A TAG X EOS = 0.54 > B Y EOS = 0.40); A is where the
# tag is likely next (p_tag(S A) = 0.9), B is tag-free.
TAG_PATH = {
    S: {A: 0.6, B: 0.4},
    A: {TAG: 0.9, X: 0.1},
    TAG: {X: 1.0},
    X: {EOS: 1.0},
    B: {Y: 1.0},
    Y: {EOS: 1.0},
    EOS: {EOS: 1.0},
}


def test_plain_beam_follows_the_tag_path_that_safebeam_avoids():
    plain = beam_search(BigramToy(TAG_PATH), [[S]], tag_id=TAG, beam_size=2, candidates_per_beam=2,
                        max_new_tokens=6, stop_ids={EOS}, pad_id=PAD)[0]
    # the tag is an ordinary token: no short-circuit, the answer goes on past it
    assert plain.tokens == [A, TAG, X] and plain.stopped == "stop"
    assert plain.tag_emitted and not plain.short_circuited
    assert plain.logprob == pytest.approx(math.log(0.6 * 0.9), abs=1e-5)
    untagged = beam_search(BigramToy(TAG_PATH), [[S]], beam_size=2, candidates_per_beam=2, max_new_tokens=6,
                           stop_ids={EOS}, pad_id=PAD)[0]
    assert untagged.tokens == [A, TAG, X] and not untagged.tag_emitted  # no tag_id: nothing to report
    safe = beam(BigramToy(TAG_PATH))[0]
    assert safe.tokens == [B, Y] and safe.stopped == "stop" and not safe.tag_emitted


# ----------------------------------------------------------------------------- safebeam_select
def test_select_drops_highest_ptag_then_keeps_best_logprob():
    lp = torch.tensor([[-1.0, -2.0, -3.0, -4.0]])
    ptag = torch.tensor([[0.9, 0.1, 0.8, 0.2]])
    idx, kept = safebeam_select(lp, ptag, torch.ones(1, 4, dtype=torch.bool), beam_size=2, drop_fraction=0.5)
    assert idx.tolist() == [[1, 3]] and kept.all()
    idx, _ = safebeam_select(lp, ptag, torch.ones(1, 4, dtype=torch.bool), beam_size=2, drop_fraction=0.0)
    assert idx.tolist() == [[0, 1]]  # plain beam search


def test_select_ties():
    # equal p_tag: the less likely candidate is dropped first; equal log-prob: the lower index is kept
    lp = torch.tensor([[-1.0, -2.0, -1.0, -2.0]])
    ptag = torch.tensor([[0.5, 0.5, 0.5, 0.5]])
    idx, kept = safebeam_select(lp, ptag, torch.ones(1, 4, dtype=torch.bool), beam_size=4, drop_fraction=0.5)
    assert idx[0, :2].tolist() == [0, 2] and kept.tolist() == [[True, True, False, False]]


def test_select_fewer_valid_than_beams_and_floor_rounding():
    lp = torch.tensor([[-1.0, -2.0, -3.0, -4.0, -5.0], [-1.0, -2.0, -3.0, -4.0, -5.0]])
    ptag = torch.tensor([[0.1, 0.2, 0.3, 0.9, 0.9], [0.0] * 5])
    valid = torch.tensor([[True, True, True, False, False], [True, False, False, False, False]])
    idx, kept = safebeam_select(lp, ptag, valid, beam_size=4, drop_fraction=0.5)
    # row 0: 3 valid → floor(1.5) = 1 dropped (the highest valid p_tag, candidate 2); invalid never kept
    assert kept.tolist() == [[True, True, False, False], [True, False, False, False]]
    assert idx[0, :2].tolist() == [0, 1] and idx[1, 0] == 0  # a lone valid candidate is never dropped
    idx, kept = safebeam_select(lp[:1, :2], ptag[:1, :2], valid[:1, :2], beam_size=4, drop_fraction=0.5)
    assert idx.shape == (1, 4) and kept.tolist() == [[True, False, False, False]]


# ----------------------------------------------------------------------------- sampling
def test_top1_is_argmax_and_samples_stay_in_top_k():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 50, generator=g)
    assert torch.equal(sample_next_token(logits, g, top_k=1, temperature=1.0), logits.argmax(-1))
    assert torch.equal(sample_next_token(logits, g, top_k=5, temperature=0.0), logits.argmax(-1))
    top5 = logits.topk(5, dim=-1).indices
    for _ in range(20):
        tok = sample_next_token(logits, g, top_k=5, temperature=2.0)
        assert (top5 == tok[:, None]).any(dim=1).all()


def test_sampling_is_reproducible_by_seed():
    logits = torch.randn(8, 100)
    def draw(seed):
        return sample_next_token(logits, torch.Generator().manual_seed(seed), top_k=20, temperature=1.0)
    assert torch.equal(draw(1), draw(1))
    assert not torch.equal(torch.stack([draw(1) for _ in range(3)]), torch.stack([draw(s) for s in (2, 3, 4)]))


def test_generate_topk_stops_and_respects_max_new_tokens():
    model = BigramToy({S: {A: 1.0}, A: {B: 1.0}, B: {EOS: 1.0}, Y: {Y: 1.0}, EOS: {EOS: 1.0}})
    gens = generate_topk(model, [[S], [Y, Y], [A]], max_new_tokens=5, top_k=3, temperature=1.0, stop_ids={EOS},
                         pad_id=PAD, seed=0, tag_id=TAG)
    assert [g.tokens for g in gens] == [[A, B], [Y] * 5, [B]]
    assert [g.stopped for g in gens] == ["stop", "length", "stop"]
    assert all(g.logprob == pytest.approx(0.0) and not g.tag_emitted for g in gens)


# ----------------------------------------------------------------------------- the real model
@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    cfg = ModelConfig(preset=None, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden=64, max_seq_len=64,
                      vocab_size=40)
    return Transformer(cfg).eval()


PROMPTS = [[3, 4, 5, 6, 7, 8], [9], [10, 11, 12], [13, 14, 15, 16, 17, 18, 19, 20, 21]]


def test_generate_topk_real_model_is_seeded(tiny):
    kw = dict(max_new_tokens=8, top_k=10, temperature=1.0, stop_ids={1}, pad_id=0, batch_size=3, tag_id=2)
    a = generate_topk(tiny, PROMPTS, seed=7, **kw)
    assert a == generate_topk(tiny, PROMPTS, seed=7, **kw)
    assert [g.tokens for g in a] != [g.tokens for g in generate_topk(tiny, PROMPTS, seed=8, **kw)]
    assert all(len(g.tokens) <= 8 for g in a)


def test_greedy_generation_matches_full_forward(tiny):
    g = generate_topk(tiny, PROMPTS[:2], max_new_tokens=6, top_k=1, temperature=1.0, stop_ids=set(), pad_id=0,
                      seed=0)
    for p, gen in zip(PROMPTS, g):
        seq = list(p)
        for _ in range(6):
            seq.append(int(tiny(torch.tensor([seq]))[0][0, -1].argmax()))
        assert gen.tokens == seq[len(p):]


def test_safe_beam_search_batched_equals_one_by_one(tiny):
    kw = dict(tag_id=2, beam_size=3, candidates_per_beam=3, max_new_tokens=7, stop_ids={1, 5}, pad_id=0)
    batched = safe_beam_search(tiny, PROMPTS, batch_size=4, **kw)
    for p, g in zip(PROMPTS, batched):
        alone = safe_beam_search(tiny, [p], batch_size=1, **kw)[0]
        assert g.tokens == alone.tokens and g.stopped == alone.stopped
        assert g.logprob == pytest.approx(alone.logprob, abs=1e-4)


def test_beam_of_one_without_drop_is_greedy(tiny):
    greedy = generate_topk(tiny, PROMPTS, max_new_tokens=6, top_k=1, temperature=1.0, stop_ids={1}, pad_id=0, seed=0)
    beam1 = safe_beam_search(tiny, PROMPTS, tag_id=2, beam_size=1, candidates_per_beam=1, drop_fraction=0.0,
                             max_new_tokens=6, stop_ids={1}, pad_id=0, short_circuit=False)
    assert [g.tokens for g in beam1] == [g.tokens for g in greedy]
    assert [g.logprob for g in beam1] == pytest.approx([g.logprob for g in greedy], abs=1e-4)


def test_beam_search_is_safebeam_without_drop_or_short_circuit(tiny):
    # this untrained model mostly repeats a prompt's last token: 8 (prompt 0) as the tag makes an answer
    # that goes on through the tag, 22 as a stop id one that stops
    kw = dict(beam_size=3, candidates_per_beam=3, max_new_tokens=7, stop_ids={1, 22}, pad_id=0, batch_size=3)
    # (two loops now: textbook beam search and the lookahead one, so log-probs agree to float precision)
    def same(a, b):
        assert [(g.tokens, g.stopped, g.short_circuited, g.tag_emitted) for g in a] == [
            (g.tokens, g.stopped, g.short_circuited, g.tag_emitted) for g in b]
        assert [g.logprob for g in a] == pytest.approx([g.logprob for g in b], abs=1e-4)

    for tag_id in (2, 8):
        plain = beam_search(tiny, PROMPTS, tag_id=tag_id, **kw)
        same(plain, safe_beam_search(tiny, PROMPTS, tag_id=tag_id, drop_fraction=0.0, short_circuit=False, **kw))
        assert all(g.tag_emitted == (tag_id in g.tokens) and not g.short_circuited for g in plain)
        assert any(g.stopped == "stop" for g in plain)
        assert any(g.tag_emitted for g in plain) == (tag_id == 8)
        for lp in (0.0, 1.0):
            same(beam_search(tiny, PROMPTS, tag_id=tag_id, length_penalty=lp, **kw), safe_beam_search(
                tiny, PROMPTS, tag_id=tag_id, drop_fraction=0.0, short_circuit=False, length_penalty=lp, **kw))


# ----------------------------------------------------------------------------- decoder registry
TOPK = TopKConfig(k=1)  # the settings models themselves: a new field is covered by its default
BEAM = SimpleNamespace(beam_size=2, candidates_per_beam=2, length_penalty=0.0)
SAFEBEAM = SimpleNamespace(beam_size=2, candidates_per_beam=2, drop_fraction=0.5, short_circuit=True,
                           length_penalty=0.0)


def run_decoder(name, model, prompts, settings, tag_id=TAG, batch_size=4, seed=0, **kw):
    args = dict(max_new_tokens=6, stop_ids={EOS}, pad_id=PAD, tag_id=tag_id, seed=seed, batch_size=batch_size)
    return decode(name, model, prompts, settings=settings, **{**args, **kw})


def test_registry_dispatches_each_decoder_with_its_own_settings():
    assert set(DECODERS) == {"topk", "beam", "safebeam"}
    prompts = [[S], [S], [B]]
    # greedy top-k and plain beam search both walk into the tag; SafeBeam steers around it
    for name, settings, first in (("topk", TOPK, [A, TAG, X]), ("beam", BEAM, [A, TAG, X]),
                                  ("safebeam", SAFEBEAM, [B, Y])):
        model = BigramToy(TAG_PATH)
        gens = run_decoder(name, model, prompts, settings)
        assert [g.tokens for g in gens] == [first, first, [Y]], name
        assert gens[0].tag_emitted == (TAG in first) and not gens[0].short_circuited
        # top-k decodes all 3 prompts together; beam decoders take half the batch (2 prompts × 2 beams)
        # (each beam prompt holds 2 cache rows; SafeBeam runs 2 candidates per row as tree queries)
        if name == "safebeam":
            assert model.candidate_rows[0] == (2 * 2, 2) and max(model.cache_rows) == 2 * 2
        else:
            assert model.decode_rows[0] == (3 if name == "topk" else 2 * 2), name


def test_registry_matches_the_direct_calls(tiny):
    common = dict(max_new_tokens=6, stop_ids={1}, pad_id=0, tag_id=2)
    sampled = TopKConfig(k=10)
    assert run_decoder("topk", tiny, PROMPTS, sampled, seed=7, batch_size=3, **common) == generate_topk(
        tiny, PROMPTS, top_k=10, temperature=1.0, seed=7, batch_size=3, **common)
    assert run_decoder("beam", tiny, PROMPTS, BEAM, batch_size=4, **common) == beam_search(
        tiny, PROMPTS, beam_size=2, candidates_per_beam=2, batch_size=2, **common)
    assert run_decoder("safebeam", tiny, PROMPTS, SAFEBEAM, batch_size=4, **common) == safe_beam_search(
        tiny, PROMPTS, beam_size=2, candidates_per_beam=2, drop_fraction=0.5, batch_size=2, **common)


def test_registry_rejects_unknown_decoders_and_safebeam_without_a_tag():
    with pytest.raises(ValueError, match="known decoders: beam, safebeam, topk"):
        run_decoder("greedy", BigramToy(TAG_PATH), [[S]], TOPK)
    with pytest.raises(ValueError, match="SafeBeam needs a tokenizer with the tag token"):
        run_decoder("safebeam", BigramToy(TAG_PATH), [[S]], SAFEBEAM, tag_id=None)
    # the control needs no tag: it still runs, only tag_emitted stays False
    assert run_decoder("beam", BigramToy(TAG_PATH), [[S]], BEAM, tag_id=None)[0].tokens == [A, TAG, X]


@pytest.mark.parametrize("top_k", [0, 3])
def test_top_p_samples_only_the_nucleus(top_k):
    # probabilities 0.5, 0.3, 0.15, 0.05: the nucleus of 0.7 is the first two tokens, of 0.9 the first three
    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log().repeat(4000, 1)
    for top_p, nucleus in ((0.7, {0, 1}), (0.9, {0, 1, 2}), (0.01, {0})):
        drawn = sample_next_token(logits, torch.Generator().manual_seed(0), top_k, 1.0, top_p)
        assert set(drawn.tolist()) == nucleus & set(range(top_k or 4))
    drawn = sample_next_token(logits, torch.Generator().manual_seed(0), top_k, 1.0, 0.7)
    assert (drawn == 0).float().mean().item() == pytest.approx(0.5 / 0.8, abs=0.03)  # renormalised


def test_repetition_penalties_are_openais():
    logits = torch.tensor([[1.0, 2.0, 3.0]])
    counts = torch.tensor([[2.0, 0.0, 1.0]])
    assert torch.equal(penalised(logits, counts, 0.5, 1.0), torch.tensor([[-1.0, 2.0, 1.5]]))
    assert torch.equal(penalised(logits, counts, 0.0, 0.0), logits)
