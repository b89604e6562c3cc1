"""Aggregates with uncertainty: every reported number comes with a bootstrap CI over its examples."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.stats import rankdata


def bootstrap_ci(values: np.ndarray, n_boot: int, seed: int, stat: Callable[[np.ndarray], float] = np.mean,
                 alpha: float = 0.05) -> tuple[float, float, float]:
    """(statistic, low, high): percentile bootstrap over the rows of `values`."""
    values = np.asarray(values)
    if len(values) == 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(values), size=(n_boot, len(values)))
    if stat is np.mean and values.ndim == 1:
        boots = values[idx].mean(axis=1)
    else:
        boots = np.array([stat(values[i]) for i in idx])
    lo, hi = np.nanpercentile(boots, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(stat(values)), float(lo), float(hi)


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties); NaN when one class is missing
    (e.g. in a bootstrap resample). Numpy only: bootstraps call it thousands of times."""

    labels = np.asarray(labels).astype(bool)
    n_pos = int(labels.sum())
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(np.asarray(scores, dtype=float))
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def weighted_auroc(scores: np.ndarray, labels: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUROC of `scores` (n,) for binary `labels` (n,) under each row of non-negative `weights` (B, n), in one
    pass: row b is the AUROC of the sample that holds row i weights[b, i] times (a bootstrap resample as counts),
    ties counted one half, as `auroc`. NaN where a class has no weight."""
    order = np.argsort(np.asarray(scores, dtype=float), kind="stable")
    s, pos, w = np.asarray(scores, dtype=float)[order], np.asarray(labels).astype(bool)[order], weights[:, order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])  # blocks of tied scores
    w_pos = np.add.reduceat(np.where(pos, w, 0.0), starts, axis=1)  # (B, blocks)
    w_neg = np.add.reduceat(np.where(pos, 0.0, w), starts, axis=1)
    below = np.cumsum(w_neg, axis=1) - w_neg  # negative weight strictly below each block
    n_pos, n_neg = w_pos.sum(1), w_neg.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (w_pos * (below + 0.5 * w_neg)).sum(1) / (n_pos * n_neg)
    return np.where((n_pos > 0) & (n_neg > 0), out, np.nan)


def auroc_ci(scores: np.ndarray, labels: np.ndarray, n_boot: int, seed: int, groups=None,
             alpha: float = 0.05) -> tuple[float, float, float]:
    """(auroc, low, high): `bootstrap_ci` of `auroc` over rows, or over whole groups when `groups` (n,) is given:
    the same resamples (the same generator draws), computed as weighted AUROCs in one pass rather than a
    thousand sorts (`weighted_auroc`)."""
    scores, labels = np.asarray(scores, dtype=float), np.asarray(labels)
    if len(scores) == 0:
        return float("nan"), float("nan"), float("nan")
    if groups is None:
        member, units = np.arange(len(scores)), len(scores)
    else:
        _, member = np.unique(np.asarray(groups), return_inverse=True)
        units = int(member.max()) + 1
    drawn = np.random.default_rng(seed).integers(0, units, size=(n_boot, units))
    counts = np.zeros((n_boot, units))
    np.add.at(counts, (np.arange(n_boot)[:, None], drawn), 1.0)
    boots = weighted_auroc(scores, labels, counts[:, member])
    lo, hi = np.nanpercentile(boots, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return auroc(scores, labels), float(lo), float(hi)


def metric_row(metric: str, value: float, lo: float, hi: float, n: int) -> dict:
    return {"metric": metric, "value": value, "ci_low": lo, "ci_high": hi, "n": n}
