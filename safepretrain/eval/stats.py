"""Pooled, paired statistics over seeds and prompts: hierarchical bootstrap, paired differences, Holm.

The unit of evidence is a per-sample value: one prompt (item) answered by one model (arm, seed) at one
(stage, decoder), e.g. 1.0 when the judge calls the response an attack success. Records look like

    {"arm": "start_20", "seed": 0, "stage": "benign_ft", "decoder": "topk", "metric": "asr/asr",
     "item": "harm-0042", "value": 1.0}

`aligned_matrices` turns them into one (S, P) matrix per arm (rows = seeds, columns = items) on the seeds
and items that all compared arms share; a cell with no record is NaN and is ignored. Per-seed-only metrics
(a probe AUROC per seed) use `item: None` (or one fixed item) and give P == 1.

Design of the resampling (seeds and prompts are *crossed*: every seed answers the same prompts):

- seeds are drawn with replacement, then prompts are drawn with replacement, and the resample is the
  sub-matrix of those rows and columns. One prompt draw is shared by all drawn seeds, so a prompt's own
  effect (an easy or hard prompt) is resampled once, as it is in the data; drawing prompts separately
  for each seed would average that effect away and give intervals that are too narrow.
- a comparison of two arms applies the *same* seed and prompt draws to both (paired by seed and prompt),
  so the shared per-prompt and per-seed effects cancel in the difference.
- with S == 1 this degenerates to an ordinary prompt bootstrap: it says nothing about seed-to-seed
  variation. With few seeds (2–5) the seed level is estimated poorly and percentile intervals tend to be
  narrow; read them together with the number of seeds that is reported next to them.
- with P == 1 (per-seed metrics) only seeds are resampled, and the p-value comes from an exact sign-flip
  (randomisation) test over the per-seed differences instead of the bootstrap, because a bootstrap over
  three seeds that agree in sign would claim p = 1/n_boot. The smallest attainable p is then 2 / 2**S
  (0.25 with 3 seeds): a per-seed metric needs many seeds before it can be significant.
"""

from __future__ import annotations

import itertools
import math
import numbers
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import norm

RecordKey = tuple[str, str, str, str]  # (arm, stage, decoder, metric)


@dataclass(frozen=True)
class PairedResult:
    """mean(a) − mean(b) over the cells both arms have, its percentile CI and a two-sided p-value."""

    diff: float
    lo: float
    hi: float
    p_value: float
    n_seeds: int
    n_prompts: int
    test: str = "bootstrap"  # "bootstrap" (P > 1) or "sign-flip" (per-seed metrics, P == 1)
    mdd: float = float("nan")  # minimum detectable difference at this n (80% power, two-sided alpha): `min_detectable`


@dataclass(frozen=True)
class AlignedMatrices:
    """One (S, P) matrix per arm, rows ordered as `seeds`, columns as `items` (NaN = no record)."""

    values: dict[str, np.ndarray]
    seeds: list
    items: list
    missing: list[str]  # arms without any record for this (stage, decoder, metric)


# --- resampling -------------------------------------------------------------------------------------------

def _as_matrix(values) -> np.ndarray:
    x = np.asarray(values, dtype=float)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2:
        raise ValueError(f"expected a (seeds, prompts) matrix, got shape {x.shape}")
    return x


def _draw_counts(n_boot: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """(n_boot, n) multiplicities of a draw of n indices with replacement."""
    if n == 1:
        return np.ones((n_boot, 1))
    return rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(float)


def _bootstrap_ratio(num: np.ndarray, den: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """Resampled sum(num) / sum(den) for n_boot joint draws of rows (seeds) then columns (prompts).

    A draw is a pair of multiplicity vectors (c over seeds, d over prompts); the sum over the resampled
    sub-matrix is c @ X @ d, so no index arrays are materialised. Draws with no usable cell give NaN.
    """
    rng = np.random.default_rng(seed)
    s, p = num.shape
    cs = _draw_counts(n_boot, s, rng)
    cp = _draw_counts(n_boot, p, rng)
    top = ((cs @ num) * cp).sum(axis=1)
    bottom = ((cs @ den) * cp).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(bottom > 0, top / np.where(bottom > 0, bottom, 1.0), np.nan)


def _percentiles(boots: np.ndarray, alpha: float) -> tuple[float, float]:
    boots = boots[np.isfinite(boots)]
    if len(boots) == 0:
        return float("nan"), float("nan")
    lo, hi = np.percentile(boots, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(lo), float(hi)


def hierarchical_bootstrap_mean(values, n_boot: int = 2000, seed: int = 0,
                                alpha: float = 0.05) -> tuple[float, float, float]:
    """(mean, lo, hi) of the mean of an (S seeds, P prompts) matrix, NaN cells ignored.

    Resamples seeds with replacement, then prompts with replacement (one prompt draw shared by the drawn
    seeds, see the module docstring); the CI is the percentile interval at level 1 − alpha. The point
    estimate is the mean of all non-missing cells. With S == 1 this is a plain prompt bootstrap and the
    interval ignores seed-to-seed variation; with P == 1 it is a bootstrap over seeds only. A 1-D input is
    read as one seed.
    """
    x = _as_matrix(values)
    mask = np.isfinite(x)
    if not mask.any():
        return float("nan"), float("nan"), float("nan")
    num, den = np.where(mask, x, 0.0), mask.astype(float)
    boots = _bootstrap_ratio(num, den, n_boot, seed)
    lo, hi = _percentiles(boots, alpha)
    return float(num.sum() / den.sum()), lo, hi


def sign_flip_p_value(diffs, n_perm: int = 10000, seed: int = 0) -> float:
    """Two-sided randomisation p-value for mean(diffs) == 0: flip the sign of each difference.

    Exact (all 2**n sign patterns) up to n = 16, Monte Carlo with n_perm patterns above. NaN entries are
    dropped; no usable difference gives NaN. With n differences the smallest exact p is 2 / 2**n.
    """
    d = np.asarray(diffs, dtype=float)
    d = d[np.isfinite(d)]
    n = len(d)
    if n == 0:
        return float("nan")
    observed = abs(d.mean())
    tol = 1e-12 * max(1.0, float(np.abs(d).max()))
    if n <= 16:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=n)))
        return float(np.mean(np.abs(signs @ d) / n >= observed - tol))
    rng = np.random.default_rng(seed)
    signs = rng.choice((1.0, -1.0), size=(n_perm, n))
    hits = np.sum(np.abs(signs @ d) / n >= observed - tol)
    return float((hits + 1) / (n_perm + 1))


def paired_difference(a, b, n_boot: int = 2000, seed: int = 0, alpha: float = 0.05) -> PairedResult:
    """mean(a) − mean(b) for two (S, P) matrices aligned on the same seeds (rows) and prompts (columns).

    Only cells present in both arms count (a pair is a (seed, prompt) answered by both). Each bootstrap
    draw of seeds and prompts is applied to both arms at once, so the difference is paired by seed and by
    prompt. The two-sided p-value is 2·min(share of resampled differences ≤ 0, share ≥ 0), clipped to
    [1/n_boot, 1]: it is below alpha exactly when 0 lies outside the percentile interval (up to ties).

    Per-seed-only metrics (P == 1) resample seeds only for the CI, and take the p-value from the exact
    sign-flip test over per-seed differences (`sign_flip_p_value`); see the module docstring for why.
    With S == 1 and P == 1 there is nothing to resample: the CI is the point and p = 1.
    """
    xa, xb = _as_matrix(a), _as_matrix(b)
    if xa.shape != xb.shape:
        raise ValueError(f"arms are not aligned: shapes {xa.shape} and {xb.shape}; use aligned_matrices first")
    both = np.isfinite(xa) & np.isfinite(xb)
    n_seeds = int(both.any(axis=1).sum())
    n_prompts = int(both.any(axis=0).sum())
    if not both.any():
        return PairedResult(float("nan"), float("nan"), float("nan"), float("nan"), 0, 0)
    d = np.where(both, xa - xb, 0.0)
    den = both.astype(float)
    diff = float(d.sum() / den.sum())
    boots = _bootstrap_ratio(d, den, n_boot, seed)
    lo, hi = _percentiles(boots, alpha)
    binary = bool(np.isin(xa[both], (0.0, 1.0)).all() and np.isin(xb[both], (0.0, 1.0)).all())
    mdd = min_detectable(boots, int(both.sum()), binary, alpha)
    if xa.shape[1] == 1:
        p = sign_flip_p_value(np.where(both[:, 0], d[:, 0], np.nan), n_perm=max(n_boot, 1000), seed=seed)
        return PairedResult(diff, lo, hi, p, n_seeds, n_prompts, test="sign-flip", mdd=mdd)
    finite = boots[np.isfinite(boots)]
    share = min(float(np.mean(finite <= 0)), float(np.mean(finite >= 0)))
    p = float(np.clip(2 * share, 1.0 / len(finite), 1.0))
    return PairedResult(diff, lo, hi, p, n_seeds, n_prompts, mdd=mdd)


POWER = 0.8  # the power at which a minimum detectable difference is stated


def min_detectable(boots: np.ndarray, n_pairs: int, binary: bool, alpha: float = 0.05, power: float = POWER) -> float:
    """The smallest true difference this comparison detects with probability `power` at two-sided level `alpha`:
    (z_{1−alpha/2} + z_power) × SE, where SE is the standard deviation of the paired bootstrap differences (it
    resamples seeds and prompts as the CI does). A binary metric at a floor has SE 0 under the null but not under
    the alternative: there it is at least (z_{1−alpha/2} + z_power)² / n_pairs, the difference that n discordant
    pairs from a zero baseline can show (McNemar-style). NaN when nothing was resampled."""
    finite = boots[np.isfinite(boots)]
    if not len(finite) or n_pairs == 0:
        return float("nan")
    k = float(norm.ppf(1 - alpha / 2) + norm.ppf(power))
    found = k * float(np.std(finite))
    return max(found, k * k / n_pairs) if binary else found


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm–Bonferroni step-down adjusted p-values, in the input order.

    Sorted ascending, the i-th smallest (0-based) of m is multiplied by (m − i); a running maximum keeps the
    adjusted values monotone and they are capped at 1. NaN entries (tests not run) stay NaN and do not
    count towards m. Reject at level alpha where the adjusted p < alpha.
    """
    p = np.asarray(list(p_values), dtype=float)
    out = np.full(len(p), np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    m = len(ok)
    running = 0.0
    for rank, i in enumerate(ok[np.argsort(p[ok], kind="stable")]):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out.tolist()


# --- tidy records -> matrices ------------------------------------------------------------------------------

def _item_key(x):
    if x is None:
        return (0, 0, "")
    if isinstance(x, numbers.Real) and not isinstance(x, bool):
        return (1, x, "")
    return (2, 0, str(x))


def _as_value(v) -> float:
    if v is None:
        return float("nan")
    v = float(v)
    return v if math.isfinite(v) else float("nan")


def index_records(records: Iterable[Mapping]) -> dict[RecordKey, dict[int, dict]]:
    """{(arm, stage, decoder, metric): {seed: {item: [values]}}}; pass it wherever records are accepted."""
    idx: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for r in records:
        idx[(r["arm"], r["stage"], r["decoder"], r["metric"])][r["seed"]][r.get("item")].append(_as_value(r["value"]))
    return idx


def _indexed(records) -> Mapping:
    return records if isinstance(records, Mapping) else index_records(records)


def aligned_matrices(records, arms: Sequence[str], stage: str, decoder: str, metric: str) -> AlignedMatrices:
    """(S, P) matrices of `arms` for one (stage, decoder, metric), aligned on common seeds and items.

    `records` is a list of per-sample records (module docstring) or the result of `index_records`. Seeds
    are those every arm has; items are those every arm has on at least one of these seeds. A (seed, item)
    cell without a record is NaN; several records for one cell (e.g. several samples of one prompt) are
    averaged. Arms with no record at all are listed in `missing` and get no matrix; then `seeds` and
    `items` refer to the remaining arms.
    """
    idx = _indexed(records)
    present = {a: idx[(a, stage, decoder, metric)] for a in arms if idx.get((a, stage, decoder, metric))}
    missing = [a for a in arms if a not in present]
    if not present:
        return AlignedMatrices({}, [], [], missing)
    seeds = set.intersection(*(set(by_seed) for by_seed in present.values()))
    items = set.intersection(*({i for s in seeds for i in by_seed[s]} for by_seed in present.values()))
    seeds_l, items_l = sorted(seeds, key=_item_key), sorted(items, key=_item_key)
    col = {it: j for j, it in enumerate(items_l)}
    values = {}
    for arm, by_seed in present.items():
        x = np.full((len(seeds_l), len(items_l)), np.nan)
        for i, s in enumerate(seeds_l):
            for it, vals in by_seed[s].items():
                if it in col:
                    v = np.asarray(vals, dtype=float)
                    v = v[np.isfinite(v)]
                    if len(v):
                        x[i, col[it]] = v.mean()
        values[arm] = x
    return AlignedMatrices(values, seeds_l, items_l, missing)


def sample_matrix(records, arm: str, stage: str, decoder: str, metric: str,
                  compared_with: Sequence[str] = ()) -> np.ndarray:
    """The (S, P) matrix of one arm, aligned on the seeds and items it shares with `compared_with`.

    Raises KeyError when this arm (or a compared arm) has no record for (stage, decoder, metric).
    """
    al = aligned_matrices(records, [arm, *[a for a in compared_with if a != arm]], stage, decoder, metric)
    if al.missing:
        raise KeyError(f"no records for arm(s) {', '.join(al.missing)} at {stage}/{decoder} for {metric}")
    return al.values[arm]
