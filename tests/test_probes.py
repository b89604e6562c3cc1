"""Linear probes on hidden states and their baselines.

    python -m pytest tests/test_probes.py -q
"""

import numpy as np
import pytest
import torch

from safepretrain.config import ModelConfig, ProbeConfig
from safepretrain.eval.metrics import auroc, auroc_ci, bootstrap_ci
from safepretrain.eval.probes import (
    cv_splits,
    layer_aurocs,
    out_of_fold_scores,
    probe_features,
    probe_report,
    random_init_like,
    surface_features,
    text_baselines,
)
from safepretrain.train.model import Transformer


def test_probe_separates_separable_data_and_not_noise():
    rng = np.random.default_rng(0)
    n, d = 60, 16
    labels = np.array([1] * n + [0] * n)
    separable = rng.normal(size=(2 * n, d))
    separable[:, 3] += 4.0 * labels  # one informative direction
    noise = rng.normal(size=(2 * n, d))
    (sep, sep_lo, _), (rand, _, rand_hi) = layer_aurocs(np.stack([separable, noise]), labels,
                                                        ProbeConfig(n_per_class=n, folds=4), n_boot=200, seed=0)
    assert sep > 0.97 and sep_lo > 0.9
    assert 0.25 < rand < 0.75 and rand_hi > 0.5
    # out-of-fold: a probe never scores an example it was trained on, so pure noise stays near chance
    assert abs(auroc(out_of_fold_scores(noise, labels, 4, 1.0, 0), labels) - 0.5) < 0.25


V, PAD, USER, END, ASSISTANT = 50, 0, 1, 2, 3


@pytest.fixture(scope="module")
def model() -> Transformer:
    torch.manual_seed(0)
    cfg = ModelConfig(preset=None, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden=64, max_seq_len=64,
                      vocab_size=V)
    return Transformer(cfg).eval()


def chat(content: list[int]) -> list[int]:
    return [USER, *content, END, ASSISTANT]


def test_features_shapes_and_batch_independence(model):
    rng = np.random.default_rng(0)
    prompts = [chat(rng.integers(4, V, size=k).tolist()) for k in (3, 11, 1, 7, 20)]
    feats = probe_features(model, prompts, PAD, last_content=-3, first_content=1, batch_size=5)
    assert set(feats) == {"last", "mean"}
    for f in feats.values():
        assert f.shape == (3, 5, 32) and f.dtype == np.float32 and np.isfinite(f).all()
    for i, p in enumerate(prompts):  # alone (no padding) == inside a padded batch
        alone = probe_features(model, [p], PAD, last_content=-3, first_content=1)
        for pool in ("last", "mean"):
            np.testing.assert_allclose(alone[pool][:, 0], feats[pool][:, i], atol=1e-5)
    # the last content token, not the trailing marker: layer 0 is that token's embedding
    emb = model.tok_emb.weight.detach().numpy()
    np.testing.assert_allclose(feats["last"][0], emb[[p[-3] for p in prompts]], atol=1e-6)
    np.testing.assert_allclose(feats["mean"][0, 1], emb[prompts[1][1:-2]].mean(0), atol=1e-6)
    # batch size and per-prompt index lists give the same answer
    again = probe_features(model, prompts, PAD, [len(p) - 3 for p in prompts], [1] * 5, batch_size=2)
    np.testing.assert_allclose(again["mean"], feats["mean"], atol=1e-5)
    with pytest.raises(ValueError, match="content span"):
        probe_features(model, [[USER, END, ASSISTANT]], PAD, last_content=-3, first_content=1)


def test_mean_pool_ignores_padding_and_markers(model):
    """Mean over the content = mean of the per-token states, whatever the pad id and the width."""
    p = chat([5, 6, 7, 8])
    long = chat(list(range(4, 40)))
    a = probe_features(model, [p, long], PAD, -3, 1)["mean"][:, 0]
    b = probe_features(model, [p, long], 17, -3, 1)["mean"][:, 0]  # a different pad token
    np.testing.assert_allclose(a, b, atol=1e-5)
    with torch.inference_mode():
        states = model.hidden_states(torch.tensor([p]), torch.ones(1, len(p), dtype=torch.bool))
    manual = np.stack([h[0, 1:-2].mean(0).numpy() for h in states])
    np.testing.assert_allclose(a, manual, atol=1e-5)


def test_group_aware_folds_keep_pairs_together():
    n_pairs = 40
    labels = np.tile([1, 0], n_pairs)
    groups = np.repeat(np.arange(n_pairs), 2)
    splits = cv_splits(labels, 5, seed=3, groups=groups)
    seen = np.zeros(len(labels), int)
    for train, test in splits:
        assert not set(groups[train]) & set(groups[test])
        assert labels[test].mean() == 0.5  # pairs keep the folds balanced
        seen[test] += 1
    assert (seen == 1).all()
    # plain stratified folds do split pairs (which is why groups matter)
    assert any(set(groups[tr]) & set(groups[te]) for tr, te in cv_splits(labels, 5, seed=3))
    with pytest.raises(ValueError, match="groups"):
        cv_splits(labels[:6], 5, 0, groups[:6])


def test_layer_aurocs_with_groups():
    """A pair-level nuisance feature shared by both sides of a pair carries no signal with group folds."""
    rng = np.random.default_rng(1)
    n_pairs = 50
    labels = np.tile([1, 0], n_pairs)
    groups = np.repeat(np.arange(n_pairs), 2)
    x = np.repeat(rng.normal(size=(n_pairs, 8)), 2, axis=0) + 0.01 * rng.normal(size=(2 * n_pairs, 8))
    informative = x.copy()
    informative[:, 0] += 3.0 * labels
    (sig, lo, hi), (noise, _, _) = layer_aurocs(np.stack([informative, x]), labels, ProbeConfig(folds=5),
                                                n_boot=200, seed=0, groups=groups)
    assert sig > 0.95 and lo <= sig <= hi
    assert 0.25 < noise < 0.75


def _one_word_texts(n: int, seed: int) -> tuple[list[str], np.ndarray]:
    rng = np.random.default_rng(seed)
    words = "river stone garden window market letter engine castle forest paper music winter".split()
    labels = np.tile([1, 0], n // 2)
    texts = [" ".join(rng.choice(words, 6)) + (" poison" if y else " flower") + " " + " ".join(rng.choice(words, 3))
             for y in labels]
    return texts, labels


def test_tfidf_baseline_finds_one_word_and_not_random_labels():
    texts, labels = _one_word_texts(120, 0)
    groups = np.repeat(np.arange(60), 2)
    out = text_baselines(texts, labels, groups, folds=5, n_boot=200, seed=0, kinds=("tfidf", "surface"))
    assert out["tfidf"][0] > 0.98
    assert 0.3 < out["surface"][0] < 0.7  # same length and punctuation in both classes
    random_labels = np.random.default_rng(1).permutation(labels)
    (rand, lo, hi), = text_baselines(texts, random_labels, None, 5, n_boot=200, seed=0, kinds=("tfidf",)).values()
    assert 0.3 < rand < 0.7 and lo < 0.5 < hi


def test_surface_baseline_sees_question_marks():
    texts, labels = _one_word_texts(80, 2)
    texts = [t + ("?" if y == 0 else ".") for t, y in zip(texts, labels)]
    assert surface_features(["Is it, really?!"]).tolist() == [[3, 15, 0, 0, 1, 1, 1, 0, 1]]
    assert text_baselines(texts, labels, folds=4, n_boot=100, kinds=("surface",))["surface"][0] > 0.98
    with pytest.raises(ValueError, match="unknown"):
        text_baselines(texts, labels, kinds=("bow",))


def test_random_init_like(model):
    state = torch.random.get_rng_state()
    fresh = random_init_like(model, seed=1)
    assert torch.equal(torch.random.get_rng_state(), state)  # global RNG untouched
    assert type(fresh) is type(model) and not fresh.training and fresh.cfg == model.cfg
    a, b = model.state_dict(), fresh.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].shape == b[k].shape and a[k].dtype == b[k].dtype
        if a[k].std() > 0:  # norms start at ones in both
            assert not torch.equal(a[k], b[k])
    again = random_init_like(model, seed=1)
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in b.items())


def test_probe_report_rows(model):
    rng = np.random.default_rng(0)
    n_pairs = 20
    labels = np.tile([1, 0], n_pairs)
    groups = np.repeat(np.arange(n_pairs), 2)
    content = [rng.integers(10, V, size=5).tolist() + ([4] if y else [5]) for y in labels]  # one token differs
    texts = [" ".join(map(str, c[:-1])) + (" bad" if y else " good") for c, y in zip(content, labels)]
    rows = probe_report(model, [chat(c) for c in content], texts, labels, pad_id=PAD, last_content=-3,
                        first_content=1, groups=groups, folds=4, n_boot=50, baselines=("tfidf", "surface"))
    by = {r["metric"]: r for r in rows}
    for prefix in ("auroc", "auroc_random_init"):
        for pool in ("last", "mean"):
            assert {f"{prefix}_{pool}_layer_{i}" for i in range(3)} <= by.keys()
            assert by[f"{prefix}_{pool}_best"]["layer"] in range(3)
        assert by[f"{prefix}_best"]["pooling"] in ("last", "mean")
    assert {"baseline_tfidf", "baseline_surface"} <= by.keys()
    assert all(r["n"] == 2 * n_pairs and set(r) >= {"value", "ci_low", "ci_high"} for r in rows)
    # the differing token is the last content token: its embedding separates the classes at layer 0
    assert by["auroc_last_layer_0"]["value"] > 0.95


@pytest.mark.parametrize("grouped", [False, True])
def test_auroc_ci_is_the_bootstrap_of_auroc_in_one_pass(grouped):
    """The weighted one-pass bootstrap equals `bootstrap_ci` of `auroc` over the same resamples (ties, small
    groups, resamples that miss a class)."""
    rng = np.random.default_rng(3)
    scores = rng.integers(0, 6, 40).astype(float)  # many ties
    labels = rng.random(40) < 0.3
    groups = rng.integers(0, 9, 40) if grouped else None
    if grouped:
        _, inverse = np.unique(groups, return_inverse=True)
        members = [np.flatnonzero(inverse == g) for g in range(inverse.max() + 1)]
        looped = bootstrap_ci(np.arange(len(members)), 500, 7, stat=lambda gs: auroc(
            scores[np.concatenate([members[g] for g in gs])], labels[np.concatenate([members[g] for g in gs])]))
    else:
        looped = bootstrap_ci(np.stack([scores, labels], axis=1), 500, 7, stat=lambda p: auroc(p[:, 0], p[:, 1]))
    assert auroc_ci(scores, labels, 500, 7, groups) == pytest.approx(looped, abs=1e-12)
