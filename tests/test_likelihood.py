"""Judge-free likelihood metrics (eval/likelihood.py) on toy models with known answers and a tiny Transformer.

    python -m pytest tests/test_likelihood.py -q

The toy model's next-token logits are a fixed table plus a bump that switches on once a "marker" token
(a word that only the harmful behaviour phrases use) has appeared, so every metric has a closed form.
"""

import math
import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from safepretrain.config import ModelConfig
from safepretrain.data.chat import chat_prompt_ids, completion_prompt
from safepretrain.data.tokenizer import TextTokenizer, train_tokenizer
from safepretrain.eval import contrast as cs
from safepretrain.eval import likelihood as lk
from safepretrain.train.model import Transformer

V = 4096
_WORDS = re.compile(r"\w+(?:'\w+)?|[^\w\s]")


class WordTok:
    """Word-level toy tokenizer: lower-cased words and punctuation marks, ids assigned on first sight."""

    pad_id, tag_id, end_id, assistant_id = 0, 1, 2, 3

    def __init__(self):
        self.vocab: dict[str, int] = {}

    def words(self, text: str) -> list[str]:
        return _WORDS.findall(text.lower())

    def encode(self, text: str) -> list[int]:
        return [self.vocab.setdefault(w, 4 + len(self.vocab)) for w in self.words(text)]

    def ids(self, words) -> list[int]:
        return sorted(self.vocab.setdefault(w, 4 + len(self.vocab)) for w in words)


class FlagModel(torch.nn.Module):
    """logits(t) = base + bump · [a marker token occurred at or before t]. Ignores everything else."""

    def __init__(self, base: torch.Tensor, bump: torch.Tensor, markers: list[int], max_seq_len: int = 512):
        super().__init__()
        self.cfg = SimpleNamespace(max_seq_len=max_seq_len)
        self.register_buffer("base", base.float())
        self.register_buffer("bump", bump.float())
        self.register_buffer("markers", torch.tensor(markers, dtype=torch.long))

    def forward(self, tokens):
        flag = (torch.isin(tokens, self.markers).long().cumsum(1) > 0).float()  # (B, T)
        return self.base + flag[..., None] * self.bump, None


@pytest.fixture(scope="module")
def toy():
    """Tokenizer, pairs whose harmful side carries a marker word, neutral prompts and the word sets."""
    tok = WordTok()
    data = cs.contrast_set()
    words = tok.words
    benign_side = set(words(" ".join(cs.compliance_fragments() + cs.refusal_references() + [cs.GENERIC_ASK])))
    benign_side |= set(words(" ".join(f["text"] for f in data["frames"])))
    for t in data["topics"]:
        benign_side |= set(words(t["benign"] + " " + cs.second_person(t["benign"])))
    neutral = cs.neutral_prompts(12, seed=0)
    benign_side |= set(words(" ".join(neutral)))
    pairs = [p for p in cs.contrast_pairs(24, seed=0)
             if set(words(p.harmful_behaviour + " " + cs.second_person(p.harmful_behaviour))) - benign_side]
    assert len(pairs) >= 16
    markers = set()
    for t in data["topics"]:
        markers |= set(words(t["harmful"] + " " + cs.second_person(t["harmful"]))) - benign_side
    compliance_side = set(words(" ".join(cs.compliance_fragments() + [cs.GENERIC_ASK])))
    prompt_side = set(words(" ".join([p.harmful + " " + p.benign + " " + cs.second_person(p.harmful_behaviour)
                                      + " " + cs.second_person(p.benign_behaviour) for p in cs.contrast_pairs()]
                                     + cs.neutral_prompts())))
    refusal_only = set(words(" ".join(cs.refusal_references()))) - compliance_side - prompt_side
    compliance_only = compliance_side - set(words(" ".join(cs.refusal_references()))) - prompt_side
    # every word a harmful-side compliance reference can contain
    harmful_compliance = compliance_side | {w for t in data["topics"] for w in words(cs.second_person(t["harmful"]))}
    # every reference carries at least one word of its own class, so the toy's preferences reach it
    assert all(set(words(r)) & refusal_only for r in cs.refusal_references())
    return SimpleNamespace(tok=tok, pairs=pairs, neutral=neutral, markers=tok.ids(markers),
                           R=tok.ids(refusal_only), C=tok.ids(compliance_only), A=tok.ids(harmful_compliance))


def flag_model(toy, *, c=0.0, b=0.0, t=0.0, a=0.0) -> FlagModel:
    """c: constant bonus of compliance-only words; b: bonus of refusal-only words once a marker was seen;
    t: bonus of the tag once a marker was seen; a: bonus of every word of a harmful-side compliance
    reference once a marker was seen."""
    base, bump = torch.zeros(V), torch.zeros(V)
    base[toy.C] = c
    bump[toy.A] = a
    bump[toy.R] = b
    bump[WordTok.tag_id] = t
    return FlagModel(base, bump, toy.markers)


def fmt(toy):
    return lambda text: [*toy.tok.encode(text), WordTok.end_id, WordTok.assistant_id]


def rows_by_name(rows):
    return {r["metric"]: r for r in rows}


# ------------------------------------------------------------------ scoring primitives on a real Transformer
def tiny_model(max_seq_len: int = 64, vocab: int = 61) -> Transformer:
    torch.manual_seed(0)
    cfg = ModelConfig(preset=None, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden=64,
                      max_seq_len=max_seq_len, vocab_size=vocab)
    return Transformer(cfg).eval()


def random_cases(k: int, seed: int, vocab: int = 61):
    g = torch.Generator().manual_seed(seed)
    prefixes = [torch.randint(2, vocab, (int(torch.randint(1, 20, (1,), generator=g)),), generator=g).tolist()
                for _ in range(k)]
    conts = [torch.randint(2, vocab, (int(torch.randint(1, 12, (1,), generator=g)),), generator=g).tolist()
             for _ in range(k)]
    return prefixes, conts


def manual(model, prefix, cont, probe=None):
    seq = torch.tensor([prefix + cont])
    with torch.no_grad():
        lp = torch.log_softmax(model(seq)[0][0].float(), -1)
    rows = range(len(prefix) - 1, len(prefix) + len(cont) - 1)
    total = sum(float(lp[i, c]) for i, c in zip(rows, cont))
    if probe is None:
        return total, len(cont)
    ps = [float(lp[i, probe].exp()) for i in rows]
    return float(lp[len(prefix) - 1, probe].exp()), sum(ps) / len(ps)


def test_continuation_logprobs_equals_a_manual_forward():
    model = tiny_model()
    prefixes, conts = random_cases(9, seed=1)
    got = lk.continuation_logprobs(model, prefixes, conts, pad_id=0, batch_size=4)
    assert got.shape == (9, 2)
    want = np.array([manual(model, p, c) for p, c in zip(prefixes, conts)])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


def test_batching_and_padding_do_not_change_values():
    model = tiny_model()
    prefixes, conts = random_cases(13, seed=2)
    ref = lk.continuation_logprobs(model, prefixes, conts, pad_id=0, batch_size=1)
    for bs in (2, 5, 64):
        np.testing.assert_allclose(lk.continuation_logprobs(model, prefixes, conts, pad_id=0, batch_size=bs), ref,
                                   rtol=1e-5, atol=1e-4)
    # a different pad id only fills positions after each sequence
    np.testing.assert_allclose(lk.continuation_logprobs(model, prefixes, conts, pad_id=7, batch_size=5), ref,
                               rtol=1e-5, atol=1e-4)


def test_token_probs_equals_a_manual_forward():
    model = tiny_model()
    prefixes, conts = random_cases(7, seed=3)
    got = lk.token_probs(model, prefixes, conts, token_id=5, pad_id=0, batch_size=3)
    want = np.array([manual(model, p, c, probe=5) for p, c in zip(prefixes, conts)])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_long_prefixes_are_left_truncated():
    model = tiny_model(max_seq_len=32)
    prefix, cont = list(range(2, 52)), [3, 4, 5, 6]
    got = lk.continuation_logprobs(model, [prefix], [cont], pad_id=0)
    want = manual(model, prefix[-(32 - len(cont)):], cont)
    np.testing.assert_allclose(got[0], want, rtol=1e-5, atol=1e-4)
    with pytest.raises(ValueError, match="empty prefix"):
        lk.continuation_logprobs(model, [[]], [cont], pad_id=0)


def test_empty_continuation_scores_zero():
    model = tiny_model()
    got = lk.continuation_logprobs(model, [[3, 4], [5]], [[], [6]], pad_id=0)
    assert tuple(got[0]) == (0.0, 0.0) and got[1, 1] == 1


# ------------------------------------------------------------------ pure metric functions
def test_pure_metric_functions():
    harmful = np.array([[[-20.0, 10], [-10.0, 10]]])  # pooled NLL 1.5 per token
    benign = np.array([[[-5.0, 10], [-5.0, 10]]])  # 0.5
    np.testing.assert_allclose(lk.gap_from_scores(harmful, benign), [1.0])
    comp = np.array([[[-10.0, 10]], [[-4.0, 2]]])  # per token -1, -2
    ref = np.array([[[-3.0, 2], [-1.0, 2]], [[-3.0, 3], [-3.0, 3]]])  # mean per token -1, -1
    np.testing.assert_allclose(lk.margin_from_scores(comp, ref), [0.0, 1.0])
    assert lk.specificity_from_margins(np.array([1.0, 1.0, 1.0]), np.array([True, False, False])) == 0.5
    assert lk.specificity_from_margins(np.array([2.0, 1.0, 0.0]), np.array([True, False, False])) == 1.0


def test_auroc_matches_sklearn_with_ties():

    rng = np.random.default_rng(0)
    for _ in range(5):
        m, y = rng.integers(0, 5, 60).astype(float), rng.random(60) < 0.4
        assert lk.specificity_from_margins(m, y) == pytest.approx(roc_auc_score(y, m))
    assert np.isnan(lk.specificity_from_margins(np.ones(3), np.ones(3, dtype=bool)))


# ------------------------------------------------------------------ metrics on toys with known answers
def test_prompt_ignoring_model_has_no_gap_and_auroc_one_half(toy):
    model = flag_model(toy)  # uniform next-token distribution, whatever the prompt
    rows, samples = lk.likelihood_metrics(model, toy.tok, fmt(toy), toy.pairs, toy.neutral, seed=0, n_boot=50)
    r = rows_by_name(rows)
    assert set(r) == set(lk.HIGHER_IS_BETTER)
    assert abs(r["compliance_gap"]["value"]) < 1e-9
    for name in ("harm_specificity", "harm_specificity_twin", "harm_specificity_neutral"):
        assert r[name]["value"] == 0.5
    assert r["forced_choice"]["value"] == 0.0  # equal per-token log-probs: compliance does not win
    assert r["tag_first_diff"]["value"] == 0.0 and r["tag_first_harmful"]["value"] == pytest.approx(1 / V)
    assert len(samples) == 2 * len(toy.pairs) + len(toy.neutral)

    model = flag_model(toy, c=1.0)  # prefers compliance words everywhere, still ignores the prompt
    r = rows_by_name(lk.likelihood_metrics(model, toy.tok, fmt(toy), toy.pairs, toy.neutral, seed=0, n_boot=50)[0])
    assert r["harm_specificity"]["value"] == 0.5
    assert r["forced_choice"]["value"] == 1.0 and r["forced_choice_benign"]["value"] == 1.0


def test_compliance_gap_and_tag_have_the_closed_form_value(toy):
    b, t = 3.0, 2.0
    model = flag_model(toy, b=b, t=t)
    rows, samples = lk.likelihood_metrics(model, toy.tok, fmt(toy), toy.pairs, toy.neutral, seed=1, n_boot=50)
    r = rows_by_name(rows)
    # after a harmful prompt every step normalises over Z1; compliance words get no bonus: NLL = log Z1
    z1 = (V - len(toy.R) - 1) + len(toy.R) * math.exp(b) + math.exp(t)
    gap = math.log(z1 / V)
    assert r["compliance_gap"]["value"] == pytest.approx(gap, rel=1e-4)
    per_pair = [s["compliance_gap"] for s in samples if s["kind"] == "harmful"]
    np.testing.assert_allclose(per_pair, gap, rtol=1e-4)
    assert r["tag_first_harmful"]["value"] == pytest.approx(math.exp(t) / z1, rel=1e-4)
    assert r["tag_first_benign"]["value"] == pytest.approx(1 / V, rel=1e-4)
    assert r["tag_mean_harmful"]["value"] == pytest.approx(math.exp(t) / z1, rel=1e-4)
    assert r["tag_mean_diff"]["value"] == pytest.approx(math.exp(t) / z1 - 1 / V, rel=1e-4)
    # the single-metric entry points agree with the combined one
    single = lk.compliance_gap(model, toy.tok, fmt(toy), toy.pairs, seed=1)
    assert single.value == pytest.approx(gap, rel=1e-4) and single.ids == [p.id for p in toy.pairs]


def test_harm_aware_refusal_is_safe_on_every_metric(toy):
    model = flag_model(toy, c=1.0, b=30.0)  # complies by default, prefers refusal words after a harmful ask
    rows, samples = lk.likelihood_metrics(model, toy.tok, fmt(toy), toy.pairs, toy.neutral, seed=2, n_boot=50)
    r = rows_by_name(rows)
    assert r["forced_choice"]["value"] == 0.0
    assert r["forced_choice_benign"]["value"] == 1.0
    for name in ("harm_specificity", "harm_specificity_twin", "harm_specificity_neutral"):
        assert r[name]["value"] == 1.0
    assert r["compliance_gap"]["value"] > 0
    assert all(s["refusal_margin"] > 0 for s in samples if s["kind"] == "harmful")
    assert all(s["refusal_margin"] < 0 for s in samples if s["kind"] != "harmful")
    fc = lk.forced_choice(model, toy.tok, fmt(toy), [p.harmful for p in toy.pairs], seed=2)
    assert fc.value == 0.0 and fc.per_prompt.shape == (len(toy.pairs),)
    hs = lk.harm_specificity(model, toy.tok, fmt(toy), toy.pairs, toy.neutral, seed=2)
    assert hs.value == 1.0


def test_harm_aware_compliance_is_unsafe(toy):
    a = 5.0
    model = flag_model(toy, a=a)  # harmful compliance becomes more likely after a harmful ask
    r = rows_by_name(lk.likelihood_metrics(model, toy.tok, fmt(toy), toy.pairs, toy.neutral, seed=3, n_boot=50)[0])
    # every harmful-side compliance token gets +a, normalised over Z1; benign side: uniform
    z1 = (V - len(toy.A)) + len(toy.A) * math.exp(a)
    assert r["compliance_gap"]["value"] == pytest.approx(math.log(z1 / V) - a, rel=1e-4)
    assert r["compliance_gap"]["value"] < 0
    assert r["forced_choice"]["value"] == 1.0
    assert r["forced_choice_benign"]["value"] == 0.0
    assert r["harm_specificity"]["value"] == 0.0


def test_values_are_deterministic_by_seed(toy):
    model = flag_model(toy, c=0.5, b=2.0, t=1.0)
    a = lk.likelihood_metrics(model, toy.tok, fmt(toy), toy.pairs[:6], toy.neutral[:4], seed=5, n_boot=30)
    b = lk.likelihood_metrics(model, toy.tok, fmt(toy), toy.pairs[:6], toy.neutral[:4], seed=5, n_boot=30)
    assert a == b


# ------------------------------------------------------------------ a real tokenizer and Transformer
def test_end_to_end_with_a_tiny_transformer():
    data = cs.contrast_set()
    texts = [t["harmful"] + " " + t["benign"] for t in data["topics"]] + cs.refusal_references() + \
        cs.compliance_fragments() + cs.neutral_prompts()
    tag = "<potentially unsafe content>"
    tok = TextTokenizer(train_tokenizer(texts, vocab_size=600, min_frequency=1, tag=tag), tag)
    model = tiny_model(max_seq_len=96, vocab=tok.vocab_size)
    pairs, neutral = cs.contrast_pairs(5, seed=0), cs.neutral_prompts(3, seed=0)
    for format_prompt, encode in ((lambda p: chat_prompt_ids(tok, p), None),
                                  (lambda p: tok.encode(completion_prompt(p)), lambda t: tok.encode(" " + t))):
        rows, samples = lk.likelihood_metrics(model, tok, format_prompt, pairs, neutral, seed=0, n_gap_refs=1,
                                              n_compliance=2, n_refusal=2, batch_size=4, n_boot=20,
                                              encode_reference=encode)
        r = rows_by_name(rows)
        assert set(r) == set(lk.HIGHER_IS_BETTER)
        assert all(np.isfinite(x["value"]) for x in rows)
        assert 0.0 <= r["harm_specificity"]["value"] <= 1.0
        assert len(samples) == 2 * len(pairs) + len(neutral)
        assert len({s["id"] for s in samples}) == len(samples)
