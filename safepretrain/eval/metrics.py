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


def metric_row(metric: str, value: float, lo: float, hi: float, n: int) -> dict:
    return {"metric": metric, "value": value, "ci_low": lo, "ci_high": hi, "n": n}
