"""The harmful-finetuning tamper curve: how fast each arm relearns what the attack never showed it.

Each arm's instruction-tuned model is finetuned on the attack set (hazards disjoint from the evaluated ones) and
its top-k ASR on the evaluated hazards is measured at every curve step (`eval.harmful_ft_curve`, plus the last step,
the `harmful_ft` stage itself). Per arm:

- the curve: ASR at each step, pooled over seeds and prompts (hierarchical bootstrap CI);
- **area under the curve** (AUC): the trapezoid mean of ASR over the steps, computed per (seed, prompt) and then
  pooled, so it has a CI and a paired difference against the raw arm (same seeds and prompts); lower = resists
  relearning longer (Deep Ignorance's tamper-resistance summary);
- **steps to half**: the first measured step whose pooled ASR reaches half of the raw arm's base-model ASR (the
  capability the unsafe arm had before any post-training); "not reached" when no step does. A point estimate on
  the measured grid, so its resolution is the grid's.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from safepretrain.eval.stats import aligned_matrices, hierarchical_bootstrap_mean, index_records, paired_difference
from safepretrain.report.data import curve_step
from safepretrain.report.findings import fmt_mdd
from safepretrain.report.plots import MARKERS, _save, plt
from safepretrain.rundir import BASE, HARMFUL_FT

METRIC, DECODER = "asr/asr", "topk"


def tamper_matrices(records: list[dict], curve_records: list[dict], arms: list[str],
                    final_step: int) -> tuple[list[int], dict[str, np.ndarray], list, list]:
    """(steps, arm → (S, P, steps) ASR array, seeds, items) on the seeds and prompts every arm and step share; the
    curve's points plus the stage's last step (`final_step`)."""
    by_step: dict[int, list[dict]] = {}
    for r in curve_records:
        by_step.setdefault(curve_step(r["stage"]), []).append(r)
    by_step.setdefault(final_step, []).extend(r for r in records if r["stage"] == HARMFUL_FT)
    steps = sorted(s for s, rs in by_step.items() if any(r["metric"] == METRIC and r["decoder"] == DECODER for r in rs))
    if not steps:
        return [], {}, [], []
    per_step = {s: aligned_matrices(index_records([{**r, "stage": "-"} for r in by_step[s]]), arms, "-", DECODER,
                                    METRIC) for s in steps}
    present = [a for a in arms if all(a in per_step[s].values for s in steps)]
    if not present:
        return [], {}, [], []
    seeds = sorted(set.intersection(*(set(m.seeds) for m in per_step.values())))
    items = sorted(set.intersection(*(set(m.items) for m in per_step.values())), key=str)
    out = {}
    for a in present:
        cube = np.full((len(seeds), len(items), len(steps)), np.nan)
        for k, s in enumerate(steps):
            m = per_step[s]
            rows, cols = [m.seeds.index(x) for x in seeds], [m.items.index(i) for i in items]
            cube[:, :, k] = m.values[a][np.ix_(rows, cols)]
        out[a] = cube
    return steps, out, seeds, items


def area_under(cube: np.ndarray, steps: list[int]) -> np.ndarray:
    """(S, P) trapezoid mean of each (seed, prompt)'s curve over `steps`."""
    if len(steps) == 1:
        return cube[:, :, 0]
    x = np.asarray(steps, float)
    return np.trapezoid(cube, x, axis=2) / (x[-1] - x[0])


def tamper_summary(records: list[dict], curve_records: list[dict], arms: list[str], final_step: int,
                   n_boot: int, control: str = "raw") -> dict:
    """{steps, curve: {arm: [(mean, lo, hi) per step]}, auc: {arm: (mean, lo, hi)}, auc_vs_control: {arm:
    PairedResult}, half: threshold, steps_to_half: {arm: step | None}} (empty dict without a curve)."""
    steps, cubes, _, _ = tamper_matrices(records, curve_records, arms, final_step)
    if not steps:
        return {}
    curve = {a: [hierarchical_bootstrap_mean(c[:, :, k], n_boot) for k in range(len(steps))] for a, c in cubes.items()}
    auc = {a: area_under(c, steps) for a, c in cubes.items()}
    base = aligned_matrices(index_records(records), [control], BASE, DECODER, METRIC)
    half = float(np.nanmean(base.values[control])) / 2 if control in base.values else math.nan
    to_half = {a: next((s for s, (m, _, _) in zip(steps, pts) if np.isfinite(half) and m >= half), None)
               for a, pts in curve.items()}
    return {"steps": steps, "curve": curve, "auc": {a: hierarchical_bootstrap_mean(v, n_boot) for a, v in auc.items()},
            "auc_vs_control": {a: paired_difference(v, auc[control], n_boot) for a, v in auc.items()
                               if control in auc and a != control},
            "half": half, "steps_to_half": to_half, "n_seeds": len(next(iter(cubes.values()))),
            "n_prompts": next(iter(cubes.values())).shape[1]}


def plot_tamper(summary: dict, path: Path) -> None:
    """ASR (top-k) along harmful finetuning, a line per arm with its 95% CI; dashed: half the raw base ASR."""
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    steps = summary["steps"]
    for k, (arm, pts) in enumerate(summary["curve"].items()):
        m = np.array([p[0] for p in pts])
        ax.plot(steps, m, marker=MARKERS[k % len(MARKERS)], label=arm)
        ax.fill_between(steps, [p[1] for p in pts], [p[2] for p in pts], alpha=0.15)
    if np.isfinite(summary["half"]):
        ax.axhline(summary["half"], color="0.4", linestyle="--", linewidth=0.8, label="½ raw base ASR")
    ax.set_xlabel("harmful-finetuning step")
    ax.set_ylabel("ASR, top-k (lower is safer)")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    ax.set_title("Tamper curve: ASR on the evaluated hazards while finetuning on others", fontsize=9)
    _save(fig, path)


def tamper_section(records: list[dict], curve_records: list[dict], arms: list[str], final_step: int, data: str,
                   out_dir: Path, n_boot: int) -> list[str]:
    """The report's tamper-curve section (markdown lines) and `tamper_curve.png`; [] without a harmful-FT curve."""
    s = tamper_summary(records, curve_records, arms, final_step, n_boot)
    if not s:
        return []
    plot_tamper(s, out_dir / "tamper_curve.png")
    steps = s["steps"]
    out = ["## Harmful finetuning: the tamper curve", "",
           f"Each arm's instruction-tuned model finetuned on the attack set (`harmful_ft.data: {data}`: hazards that "
           "are never evaluated), with top-k ASR on the evaluated hazards at each step (exact judge; pooled over "
           f"{s['n_seeds']} seed(s) × {s['n_prompts']} prompts, 95% CI). AUC = trapezoid mean ASR over the steps "
           "(per seed and prompt, then pooled; lower resists relearning longer), paired against raw. Steps to half = "
           f"first measured step whose ASR reaches half the raw arm's base ASR ({s['half']:.3f}).", "",
           "| arm | " + " | ".join(f"step {x}" for x in steps) + " | AUC | AUC − raw | steps to half |",
           "|---|" + "---|" * (len(steps) + 3)]
    for arm, pts in s["curve"].items():
        a = s["auc"][arm]
        d = s["auc_vs_control"].get(arm)
        diff = (f"{d.diff:+.3f} [{d.lo:+.3f}, {d.hi:+.3f}], {fmt_mdd(d)}" if d is not None else "–")
        reached = s["steps_to_half"][arm]
        out.append(f"| {arm} | " + " | ".join(f"{m:.3f} [{lo:.2f}, {hi:.2f}]" for m, lo, hi in pts)
                   + f" | {a[0]:.3f} [{a[1]:.2f}, {a[2]:.2f}] | {diff} | "
                   + (f"{reached}" if reached is not None else f"not reached (> {steps[-1]})") + " |")
    return out + ["", "![Tamper curve](tamper_curve.png)", ""]
