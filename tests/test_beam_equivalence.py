"""The cheaper beam decoders compute what the K·C-row loop computed (issue 22): plain beam search is textbook
K-row beam search, SafeBeam scores its candidates as tree-attention queries over one cache row per beam.

`reference_search` below is the loop both decoders ran before (every candidate its own cache row, appended by
`decode`), kept verbatim as the yardstick; it calls `beam.safebeam_select` through the module so that a test can
record what each step selected from (cumulative log-probs, p_tag, validity).

    python -m pytest tests/test_beam_equivalence.py -q
"""

import math

import pytest
import torch
from decoding_toy import EOS, PAD, TAG, A, B, BigramToy, S, X, Y

from safepretrain.config import ModelConfig
from safepretrain.eval.decoders import beam, beam_search, fit_prompts, left_pad, safe_beam_search
from safepretrain.eval.decoders.base import Generation
from safepretrain.train.model import Transformer


# ----------------------------------------------------------------------------- the loop before issue 22
def reference_search(model, prompts, *, tag_id, beam_size, candidates_per_beam, drop_fraction, max_new_tokens,
                     stop_ids, pad_id, short_circuit, length_penalty=0.0, batch_size=16):
    prompts = fit_prompts(model, prompts, max_new_tokens)
    out = []
    for start in range(0, len(prompts), batch_size):
        out += _reference_batch(model, prompts[start:start + batch_size], tag_id, beam_size, candidates_per_beam,
                                drop_fraction, max_new_tokens, stop_ids, pad_id, short_circuit, length_penalty)
    return out


@torch.inference_mode()
def _reference_batch(model, prompts, tag_id, K, C, drop_fraction, max_new_tokens, stop_ids, pad_id, short_circuit,
                     length_penalty):
    device = model.device
    tokens, mask = left_pad(prompts, pad_id, device)
    cache = model.new_cache(len(prompts), tokens.shape[1] + max_new_tokens)
    logits = model.prefill(tokens, mask, cache)  # (P, V)
    V = logits.shape[-1]
    C = min(C, V)
    stop = torch.tensor(sorted(stop_ids), dtype=torch.long, device=device)
    owner = torch.arange(len(prompts), device=device)  # (A,)
    A = len(prompts)
    next_logp = logits.float().log_softmax(-1)[:, None].expand(A, K, V)  # (A, K, V)
    beam_logp = torch.full((A, K), -math.inf, device=device)
    beam_logp[:, 0] = 0.0
    seqs = torch.empty(A, K, 0, dtype=torch.long, device=device)  # (A, K, t) generated so far
    cache.reorder(torch.arange(A, device=device).repeat_interleave(K * C))  # one cache row per candidate
    pool = [[] for _ in prompts]
    for step in range(max_new_tokens):
        top_lp, top_tok = next_logp.topk(C, dim=-1)  # (A, K, C)
        cand_lp = (beam_logp[..., None] + top_lp).view(A, K * C)
        cand_tok = top_tok.reshape(A, K * C)
        valid = torch.isfinite(cand_lp)
        la_logp = model.decode(cand_tok.reshape(-1), cache).float().log_softmax(-1).view(A, K * C, V)
        ptag = la_logp[..., tag_id].exp() if tag_id is not None else torch.zeros_like(cand_lp)  # (A, K*C)
        index, kept = beam.safebeam_select(cand_lp, ptag, valid, K, drop_fraction)  # (A, K)
        tok = cand_tok.gather(1, index)  # (A, K)
        new_lp = cand_lp.gather(1, index)
        parent = index // C
        seqs = torch.cat([seqs.gather(1, parent[..., None].expand(-1, -1, seqs.shape[2])), tok[..., None]], dim=2)
        is_stop = torch.isin(tok, stop)
        is_tag = (tok == tag_id) & ~is_stop & short_circuit if tag_id is not None else torch.zeros_like(is_stop)
        finish = kept & (is_stop | is_tag | (step == max_new_tokens - 1))
        live = kept & ~finish
        if bool(finish.any()):
            for a, toks, lp, by_stop, by_tag in zip(owner[finish.nonzero()[:, 0]].tolist(), seqs[finish].tolist(),
                                                    new_lp[finish].tolist(), is_stop[finish].tolist(),
                                                    is_tag[finish].tolist()):
                toks = toks[:-1] if by_stop else toks
                stopped = "stop" if by_stop else "tag" if by_tag else "length"
                pool[a].append(Generation(toks, lp, stopped, by_tag, tag_id is not None and tag_id in toks))
        searching = live.any(dim=1)
        if not bool(searching.any()):
            break
        rows = (torch.arange(A, device=device)[:, None] * (K * C) + index)[searching]  # (A', K)
        next_logp = la_logp.gather(1, index[..., None].expand(-1, -1, V))[searching]  # (A', K, V)
        beam_logp = new_lp.masked_fill(~live, -math.inf)[searching]
        seqs, owner = seqs[searching], owner[searching]
        A = int(searching.sum())
        cache.reorder(rows.reshape(-1).repeat_interleave(C))

    def score(g):
        return g.logprob / max(1, len(g.tokens)) ** length_penalty

    return [max(hyps, key=score) for hyps in pool]


def assert_same_hypotheses(got, want, abs_lp=1e-4):
    assert [(g.tokens, g.stopped, g.short_circuited, g.tag_emitted) for g in got] == [
        (g.tokens, g.stopped, g.short_circuited, g.tag_emitted) for g in want]
    assert [g.logprob for g in got] == pytest.approx([g.logprob for g in want], abs=abs_lp)


# ----------------------------------------------------------------------------- models
# Bigram tables for the toy (tests/decoding_toy.py); TIES has equal probabilities, so the tie rules matter too.
TABLES = {
    "fork": {S: {A: 0.55, B: 0.40, EOS: 0.05}, A: {X: 0.80, TAG: 0.15, EOS: 0.05}, B: {Y: 0.60, EOS: 0.40},
             X: {EOS: 0.90, TAG: 0.10}, Y: {EOS: 0.99, X: 0.01}, TAG: {X: 1.0}, EOS: {EOS: 1.0}},
    "tag_path": {S: {A: 0.6, B: 0.4}, A: {TAG: 0.9, X: 0.1}, TAG: {X: 1.0}, X: {EOS: 1.0}, B: {Y: 1.0},
                 Y: {EOS: 1.0}, EOS: {EOS: 1.0}},
    "ties": {S: {A: 0.25, B: 0.25, X: 0.25, Y: 0.25}, A: {A: 0.3, B: 0.3, TAG: 0.3, EOS: 0.1},
             B: {X: 0.4, Y: 0.4, EOS: 0.2}, X: {A: 0.5, TAG: 0.5}, Y: {Y: 0.5, EOS: 0.5}, TAG: {X: 0.5, Y: 0.5},
             EOS: {EOS: 1.0}},
}
TOY_PROMPTS = [[S], [PAD, S], [A], [B, X]]


@pytest.fixture(scope="module")
def smoke_model():
    """The smoke study's model shape (preset tiny: 3 layers, d_model 128) with a GQA twist, its weights moved off
    the near-uniform initialisation so that beams separate the way a trained model's do."""
    torch.manual_seed(0)
    model = Transformer(ModelConfig(preset="tiny", n_kv_heads=2, vocab_size=512)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


SMOKE_PROMPTS = [[5, 9, 14, 3, 77, 120], [300], [41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51], [7, 7, 8]]


# ----------------------------------------------------------------------------- plain beam: K rows, same answers
@pytest.mark.parametrize("table", sorted(TABLES))
@pytest.mark.parametrize("K,C", [(1, 1), (2, 2), (2, 4), (3, 5), (3, 2)])
def test_textbook_beam_returns_the_kc_row_control_hypotheses_toy(table, K, C):
    kw = dict(beam_size=K, candidates_per_beam=C, max_new_tokens=6, stop_ids={EOS}, pad_id=PAD, batch_size=3)
    for lp in (0.0, 1.0):
        want = reference_search(BigramToy(TABLES[table]), TOY_PROMPTS, tag_id=TAG, drop_fraction=0.0,
                                short_circuit=False, length_penalty=lp, **kw)
        model = BigramToy(TABLES[table])
        got = beam_search(model, TOY_PROMPTS, tag_id=TAG, length_penalty=lp, **kw)
        assert_same_hypotheses(got, want, abs_lp=1e-6)
        assert max(model.cache_rows) == 3 * K  # K rows per prompt, not K·C
        assert model.candidate_rows == []  # no lookahead


@pytest.mark.parametrize("K,C", [(4, 4), (2, 4), (3, 3)])
def test_textbook_beam_returns_the_kc_row_control_hypotheses_smoke_model(smoke_model, K, C):
    kw = dict(beam_size=K, candidates_per_beam=C, max_new_tokens=10, pad_id=0, batch_size=3)
    stopped = set()
    # 256 and 111 are tokens this model's beams settle into, so with them some searches stop early
    for stop_ids, tag_id in (({1}, 2), ({256, 111}, None)):
        want = reference_search(smoke_model, SMOKE_PROMPTS, tag_id=tag_id, drop_fraction=0.0, short_circuit=False,
                                stop_ids=stop_ids, **kw)
        got = beam_search(smoke_model, SMOKE_PROMPTS, tag_id=tag_id, stop_ids=stop_ids, **kw)
        assert_same_hypotheses(got, want)
        stopped |= {g.stopped for g in got}
    assert stopped == {"stop", "length"}


# ----------------------------------------------------------------------------- SafeBeam: tree attention, same p_tag
@pytest.fixture
def selections(monkeypatch):
    """Every safebeam_select call's (cumulative log-probs, p_tag, valid), in order; cleared by the test."""
    calls = []
    real = beam.safebeam_select

    def record(cand_logprob, cand_ptag, valid, beam_size, drop_fraction):
        calls.append((cand_logprob.clone(), cand_ptag.clone(), valid.clone()))
        return real(cand_logprob, cand_ptag, valid, beam_size, drop_fraction)

    monkeypatch.setattr(beam, "safebeam_select", record)
    return calls


def assert_same_selections(got, want, atol):
    assert len(got) == len(want)
    for (lp, ptag, valid), (lp0, ptag0, valid0) in zip(got, want):
        assert torch.equal(valid, valid0)
        assert torch.allclose(lp[valid], lp0[valid0], atol=atol)
        assert torch.allclose(ptag, ptag0, rtol=1e-4, atol=atol)


@pytest.mark.parametrize("table", sorted(TABLES))
def test_safebeam_tree_attention_keeps_ptag_and_hypotheses_toy(table, selections):
    for drop, sc in ((0.5, True), (0.5, False), (0.0, False), (0.75, True)):
        kw = dict(tag_id=TAG, beam_size=2, candidates_per_beam=3, drop_fraction=drop, max_new_tokens=6,
                  stop_ids={EOS}, pad_id=PAD, short_circuit=sc, batch_size=3)
        selections.clear()
        want = reference_search(BigramToy(TABLES[table]), TOY_PROMPTS, **kw)
        want_sel = list(selections)
        selections.clear()
        model = BigramToy(TABLES[table])
        got = safe_beam_search(model, TOY_PROMPTS, **kw)
        assert_same_hypotheses(got, want, abs_lp=1e-6)
        assert_same_selections(selections, want_sel, atol=1e-6)
        assert max(model.cache_rows) == 3 * 2 and model.decode_rows == []  # one row per beam, no decode


def test_safebeam_tree_attention_keeps_ptag_and_hypotheses_smoke_model(smoke_model, selections):
    # the tag is 468, a token one prompt's beams repeat, so that its p_tag stands out and the drop decides;
    # 256 (another's) a stop id
    for drop, sc, K, C in ((0.5, True, 4, 4), (0.5, False, 2, 3), (0.25, True, 3, 5)):
        kw = dict(tag_id=468, beam_size=K, candidates_per_beam=C, drop_fraction=drop, max_new_tokens=10,
                  stop_ids={1, 256}, pad_id=0, short_circuit=sc, batch_size=3)
        selections.clear()
        want = reference_search(smoke_model, SMOKE_PROMPTS, **kw)
        want_sel = list(selections)
        selections.clear()
        got = safe_beam_search(smoke_model, SMOKE_PROMPTS, **kw)
        assert_same_hypotheses(got, want)
        assert_same_selections(selections, want_sel, atol=1e-5)


# ----------------------------------------------------------------------------- the model's tree attention
def test_decode_candidates_equals_decoding_each_candidate_alone(smoke_model):
    model = smoke_model
    prompts = [[5, 6, 7], [9, 10, 11, 12, 13, 14, 15], [20]]
    cand = torch.tensor([[30, 31, 32], [40, 41, 42], [50, 51, 52]])
    tokens, mask = left_pad(prompts, 0, "cpu")
    cache = model.new_cache(3, tokens.shape[1] + 3, candidates=3)
    model.prefill(tokens, mask, cache)

    def full(seq):  # logits after `seq` by a forward without any cache
        return model(torch.tensor([seq]))[0][0, -1]

    with torch.no_grad():
        got = model.decode_candidates(cand, cache)  # (3, 3, V)
        for r, p in enumerate(prompts):
            for j in range(3):
                assert torch.allclose(got[r, j], full(p + [cand[r, j].item()]), atol=1e-4)
        # new rows: prompt 1 with its candidate 2, prompt 0 with candidate 0, prompt 0 with candidate 1
        cache.reorder(torch.tensor([1, 0, 0]), torch.tensor([2, 0, 1]))
        seqs = [prompts[1] + [42], prompts[0] + [30], prompts[0] + [31]]
        again = model.decode_candidates(torch.tensor([[60, 61], [62, 63], [64, 65]]), cache)
        for r, s in enumerate(seqs):
            assert torch.allclose(again[r, 0], full(s + [60 + 2 * r]), atol=1e-4)
            assert torch.allclose(again[r, 1], full(s + [61 + 2 * r]), atol=1e-4)
        cache.reorder(torch.tensor([2, 0]), torch.tensor([1, 0]))  # then a plain decode continues it
        last = model.decode(torch.tensor([70, 71]), cache)
        assert torch.allclose(last[0], full(seqs[2] + [65, 70]), atol=1e-4)
        assert torch.allclose(last[1], full(seqs[0] + [60, 71]), atol=1e-4)


def test_decode_candidates_needs_room_and_pending_candidates(smoke_model):
    cache = smoke_model.new_cache(2, 3)  # room for one token after the prompt and no more
    smoke_model.prefill(torch.tensor([[3, 4], [5, 6]]), torch.ones(2, 2, dtype=torch.bool), cache)
    with pytest.raises(ValueError, match=r"new_cache\(\.\.\., candidates=3\)"):
        smoke_model.decode_candidates(torch.tensor([[7, 8, 9], [7, 8, 9]]), cache)
    smoke_model.decode_candidates(torch.tensor([[7], [8]]), cache)  # one candidate fits the one free slot
    with pytest.raises(ValueError, match="one of the 1 candidates pending"):
        cache.reorder(torch.tensor([0, 1]), torch.tensor([0, 1]))
    cache.reorder(torch.tensor([0, 1]))  # without a candidate the pending ones are dropped
    with pytest.raises(ValueError, match="one of the 0 candidates pending"):
        cache.reorder(torch.tensor([0, 1]), torch.tensor([0, 0]))
