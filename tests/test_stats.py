"""Pooled, paired statistics: bootstrap coverage, pairing, per-seed tests, Holm, record alignment."""

import math

import numpy as np
import pytest

from safepretrain.eval.metrics import bootstrap_ci
from safepretrain.eval.stats import (
    aligned_matrices,
    hierarchical_bootstrap_mean,
    holm,
    index_records,
    paired_difference,
    sample_matrix,
    sign_flip_p_value,
)


def _crossed(rng, s, p, mu=0.3, sd_seed=0.5, sd_prompt=0.5, sd_noise=1.0):
    return mu + rng.normal(0, sd_seed, (s, 1)) + rng.normal(0, sd_prompt, (1, p)) + rng.normal(0, sd_noise, (s, p))


def test_prompt_bootstrap_covers_at_nominal_rate():
    """S == 1 is a plain prompt bootstrap: the 95% CI covers the true mean about 95% of the time."""
    rng = np.random.default_rng(0)
    hits = 0
    for rep in range(300):
        _, lo, hi = hierarchical_bootstrap_mean(rng.normal(0.3, 1.0, (1, 60)), n_boot=400, seed=rep)
        hits += lo <= 0.3 <= hi
    assert 0.89 <= hits / 300 <= 0.98


def test_hierarchical_bootstrap_covers_with_seed_and_prompt_effects():
    """With seed and prompt effects the hierarchical CI keeps roughly nominal coverage of the true mean, where a
    bootstrap over pooled cells (ignoring who answered what) is far too narrow."""
    rng = np.random.default_rng(1)
    hier = naive = 0
    reps = 200
    for rep in range(reps):
        x = _crossed(rng, 10, 30)
        _, lo, hi = hierarchical_bootstrap_mean(x, n_boot=400, seed=rep)
        hier += lo <= 0.3 <= hi
        _, lo, hi = bootstrap_ci(x.ravel(), 400, rep)
        naive += lo <= 0.3 <= hi
    assert hier / reps >= 0.85
    assert naive / reps < hier / reps - 0.2


def test_bootstrap_ignores_missing_cells():
    x = np.array([[1.0, np.nan, 3.0], [np.nan, 2.0, np.nan]])
    mean, lo, hi = hierarchical_bootstrap_mean(x, n_boot=200, seed=0)
    assert mean == pytest.approx(2.0)
    assert 1.0 <= lo <= mean <= hi <= 3.0
    assert all(math.isnan(v) for v in hierarchical_bootstrap_mean(np.full((2, 3), np.nan), n_boot=50, seed=0))
    # a 1-D vector is one seed
    assert hierarchical_bootstrap_mean([1.0, 2.0, 3.0], n_boot=50, seed=0)[0] == pytest.approx(2.0)


def test_pairing_shrinks_the_interval():
    """Arms that share a large per-prompt effect: the paired CI of the difference is far narrower than the
    arms' own CIs, and it separates a difference that unpaired intervals cannot."""
    rng = np.random.default_rng(2)
    prompt = rng.normal(0, 1.0, (1, 80))
    a = 0.5 + prompt + rng.normal(0, 0.05, (3, 80))
    b = 0.4 + prompt + rng.normal(0, 0.05, (3, 80))
    res = paired_difference(a, b, n_boot=1000, seed=0)
    _, alo, ahi = hierarchical_bootstrap_mean(a, n_boot=1000, seed=1)
    _, blo, bhi = hierarchical_bootstrap_mean(b, n_boot=1000, seed=2)
    assert res.diff == pytest.approx(0.1, abs=0.02)
    assert res.lo > 0 and res.p_value < 0.01
    assert alo < bhi  # unpaired intervals overlap
    assert (res.hi - res.lo) < 0.1 * math.hypot(ahi - alo, bhi - blo)
    assert (res.n_seeds, res.n_prompts, res.test) == (3, 80, "bootstrap")


def test_paired_p_value_under_the_null_and_degenerate_cases():
    rng = np.random.default_rng(3)
    ps = [paired_difference(_crossed(rng, 3, 40), _crossed(rng, 3, 40), n_boot=300, seed=i).p_value
          for i in range(60)]
    assert np.mean(np.array(ps) < 0.05) <= 0.15
    zeros = np.zeros((2, 10))
    res = paired_difference(zeros, zeros, n_boot=200, seed=0)
    assert (res.diff, res.lo, res.hi, res.p_value) == (0.0, 0.0, 0.0, 1.0)
    shifted = paired_difference(zeros + 0.5, zeros, n_boot=200, seed=0)
    assert shifted.p_value == pytest.approx(1 / 200)
    with pytest.raises(ValueError, match="aligned"):
        paired_difference(zeros, np.zeros((3, 10)))
    # only cells present in both arms count
    a = np.array([[1.0, 2.0, np.nan]])
    b = np.array([[0.0, np.nan, 5.0]])
    res = paired_difference(a, b, n_boot=100, seed=0)
    assert res.diff == pytest.approx(1.0) and (res.n_seeds, res.n_prompts) == (1, 1)


def test_per_seed_metric_uses_sign_flip_test():
    """P == 1: three agreeing seeds cannot reach p < 0.25; eight can reach 2/256."""
    three = paired_difference(np.array([[0.9], [0.92], [0.95]]), np.array([[0.8], [0.81], [0.8]]), n_boot=500)
    assert three.test == "sign-flip" and three.p_value == pytest.approx(0.25)
    assert three.diff == pytest.approx((0.1 + 0.11 + 0.15) / 3)
    eight = paired_difference(np.linspace(0.9, 0.95, 8)[:, None], np.full((8, 1), 0.8), n_boot=500)
    assert eight.p_value == pytest.approx(2 / 256)
    assert sign_flip_p_value([0.0, 0.0]) == 1.0
    assert sign_flip_p_value([1.0, -1.0, 1.0, -1.0]) == 1.0
    assert math.isnan(sign_flip_p_value([np.nan]))
    single = paired_difference([[0.9]], [[0.8]])
    assert single.p_value == 1.0 and single.lo == single.hi == pytest.approx(0.1)


def test_holm_against_hand_computed_values():
    # sorted: 0.005*4=0.02, 0.01*3=0.03, 0.03*2=0.06, 0.04*1=0.04 -> monotone 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])
    assert holm([0.02]) == pytest.approx([0.02])
    out = holm([0.01, float("nan"), 0.02])  # NaN = not run: stays NaN, m = 2
    assert out[0] == pytest.approx(0.02) and math.isnan(out[1]) and out[2] == pytest.approx(0.02)
    assert holm([]) == []
    adj = holm(np.random.default_rng(4).uniform(size=30))
    assert max(adj) <= 1.0


def _rec(arm, seed, item, value, metric="asr/asr", stage="benign_ft", decoder="topk"):
    return {"arm": arm, "seed": seed, "stage": stage, "decoder": decoder, "metric": metric, "item": item,
            "value": value}


def test_aligned_matrices_keep_common_seeds_and_items():
    recs = [_rec("a", 0, "p1", 1), _rec("a", 0, "p2", 0), _rec("a", 0, "p3", 1), _rec("a", 1, "p1", 0),
            _rec("a", 2, "p1", 1),
            _rec("b", 0, "p1", 0), _rec("b", 0, "p2", 1), _rec("b", 0, "p2", 0), _rec("b", 1, "p1", 1),
            _rec("b", 1, "p2", None),
            _rec("a", 0, "p1", 5, stage="ift")]
    al = aligned_matrices(recs, ["a", "b", "c"], "benign_ft", "topk", "asr/asr")
    assert al.seeds == [0, 1] and al.items == ["p1", "p2"] and al.missing == ["c"]
    np.testing.assert_array_equal(al.values["a"], [[1, 0], [0, np.nan]])
    np.testing.assert_array_equal(al.values["b"], [[0, 0.5], [1, np.nan]])  # duplicates averaged, None = missing
    idx = index_records(recs)
    alone = sample_matrix(idx, "a", "benign_ft", "topk", "asr/asr")
    np.testing.assert_array_equal(alone, [[1, 0, 1], [0, np.nan, np.nan], [1, np.nan, np.nan]])
    np.testing.assert_array_equal(sample_matrix(idx, "a", "benign_ft", "topk", "asr/asr", ["b"]), al.values["a"])
    with pytest.raises(KeyError, match="c"):
        sample_matrix(recs, "a", "benign_ft", "topk", "asr/asr", ["c"])
    per_seed = [_rec("a", s, None, 0.9, metric="probe/auroc_best", stage="base", decoder="none") for s in (2, 0)]
    al = aligned_matrices(per_seed, ["a"], "base", "none", "probe/auroc_best")
    assert al.values["a"].shape == (2, 1) and al.seeds == [0, 2]


def test_minimum_detectable_difference_shrinks_with_n_and_is_not_zero_at_a_floor():
    rng = np.random.default_rng(0)
    small = paired_difference((rng.random((3, 48)) < 0.3).astype(float), (rng.random((3, 48)) < 0.3).astype(float),
                              1000)
    large = paired_difference((rng.random((3, 300)) < 0.3).astype(float), (rng.random((3, 300)) < 0.3).astype(float),
                              1000)
    assert 0 < large.mdd < small.mdd < 0.5
    assert large.mdd > abs(large.hi - large.lo) / 2  # 80% power needs more than the CI half-width
    floor = paired_difference(np.zeros((3, 48)), np.zeros((3, 48)), 500)
    assert floor.lo == floor.hi == 0 and floor.mdd > 0.03  # a floor still cannot see a small rise
