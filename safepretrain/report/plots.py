"""Report plots (matplotlib, Agg backend): the headline (ASR by intervention start, a line per stage), ASR and
refusals vs start per stage and decoder, probe AUROC vs layer. Axis arrows come from the tasks' declared
directions (`report/sections.py: arrow`)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from cycler import cycler  # noqa: E402

from safepretrain.report.sections import arrow, stage_title  # noqa: E402
from safepretrain.rundir import STAGE_NAMES  # noqa: E402

STAGES = STAGE_NAMES
MARKERS = ["o", "s", "^", "D", "v", "P"]  # a marker per line besides its colour
# Okabe & Ito's colour-blind-safe palette: every plot's "C0", "C1", ... come from it
OKABE_ITO = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000"]
matplotlib.rcParams["axes.prop_cycle"] = cycler(color=OKABE_ITO)


def _save(fig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)
    tmp.replace(path)


def _start_axis(ax, starts: dict[str, float | None], arms: list[str]) -> dict[str, float]:
    """x of each arm: its intervention start, arms without one (raw) in slots to the right; ticks name them."""
    xs = {a: starts[a] for a in arms if starts.get(a) is not None}
    for k, a in enumerate(a for a in arms if starts.get(a) is None):
        xs[a] = 1.2 + 0.15 * k
    ticks: dict[float, list[str]] = {}
    for a, x in xs.items():
        ticks.setdefault(x, []).append(a if starts.get(a) is None else f"{a}\n{x:.0%}")
    ax.set_xticks(list(ticks), ["\n".join(v) for v in ticks.values()], fontsize=7)
    if len(xs) > len([a for a in arms if starts.get(a) is None]):
        ax.axvline(1.1, color="0.7", linewidth=0.8)
    ax.set_xlim(-0.08, max(xs.values(), default=1.0) + 0.1)
    return xs


def plot_headline(rows: list[dict], starts: dict[str, float | None], higher: dict[str, bool], path: Path,
                  decoder: str = "topk", judge: str = "") -> bool:
    """The report's headline: attack success rate (pooled over seeds and prompts, bars = 95% CI) by the arm's
    intervention start, a line per stage; arms without a start (raw) stand apart on the right. False (and no
    file) when the run has no ASR under `decoder`."""
    sel = [r for r in rows if r["task"] == "asr" and r["metric"] == "asr" and r["decoder"] == decoder]
    if not sel:
        return False
    arms = [a for a in starts if any(r["arm"] == a for r in sel)]
    fig, ax = plt.subplots(figsize=(7.5, 4.0))
    xs = _start_axis(ax, starts, arms)
    stages = [s for s in STAGES if any(r["stage"] == s for r in sel)]
    for k, stage in enumerate(stages):
        dodge = 0.02 * (k - (len(stages) - 1) / 2)  # side by side, so the bars of one arm do not hide each other
        here = {r["arm"]: r for r in sel if r["stage"] == stage and r["arm"] in xs}
        label = stage_title(stage).replace("`", "")
        for joined in (True, False):  # arms with a start on a line, the others as lone points
            mine = [a for a in arms if a in here and (starts.get(a) is not None) == joined]
            pts = sorted(((xs[a] + dodge, here[a]) for a in mine), key=lambda p: p[0])
            if not pts:
                continue
            err = [[r["value"] - r["ci_low"] for _, r in pts], [r["ci_high"] - r["value"] for _, r in pts]]
            ax.errorbar([x for x, _ in pts], [r["value"] for _, r in pts], yerr=err, color=f"C{k}",
                        marker=MARKERS[k % len(MARKERS)], capsize=3, linestyle="-" if joined else "none", label=label)
            label = None
    top = max(r["ci_high"] for r in sel)
    if min(r["ci_low"] for r in sel) >= 0 and top <= 1:  # a rate: from 0, with room above the highest bar
        ax.set_ylim(-0.02, min(1.02, max(0.1, top) + 0.05))
    ax.set_xlabel("intervention start (fraction of the pretraining budget)")
    ax.set_ylabel(f"attack success rate {arrow(higher.get('asr/asr'))}".strip())
    who = f"judge {judge}, " if judge else ""
    ax.set_title(f"ASR by intervention start ({who}{decoder} decoding; mean over seeds and prompts, 95% CI)",
                 fontsize=9)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="best")
    _save(fig, path)
    return True


def plot_asr_vs_start(rows: list[dict], starts: dict[str, float | None], path: Path,
                      higher: dict[str, bool] | None = None) -> None:
    """Rows: attack success rate and refusal rate; columns: stages. Each panel plots the metric against the
    intervention start fraction (one point per arm and seed, bars = 95% CI), a line per decoder; arms
    without a start (raw) are dashed horizontal references."""
    higher = higher or {}
    panels = [("asr", "attack success rate"), ("refusal_rate", "refusal rate (harmful prompts)")]
    fig, axes = plt.subplots(len(panels), len(STAGES), figsize=(4.2 * len(STAGES), 3.2 * len(panels)),
                             sharey="row", squeeze=False)
    for row, (metric, ylabel) in enumerate(panels):
        sel = [r for r in rows if r["task"] == "asr" and r["metric"] == metric]
        decoders = sorted({r["decoder"] for r in sel}, reverse=True)  # topk, safebeam
        for ax, stage in zip(axes[row], STAGES):
            for k, dec in enumerate(decoders):
                color = f"C{k}"
                here = [r for r in sel if r["stage"] == stage and r["decoder"] == dec]
                pts = sorted(((starts[r["arm"]], r) for r in here if starts.get(r["arm"]) is not None),
                             key=lambda p: p[0])
                if pts:
                    err = [[r["value"] - r["ci_low"] for _, r in pts], [r["ci_high"] - r["value"] for _, r in pts]]
                    ax.errorbar([x for x, _ in pts], [r["value"] for _, r in pts], yerr=err, marker="o", capsize=3,
                                color=color, label=dec)
                for r in here:
                    if starts.get(r["arm"]) is None:
                        ax.axhline(r["value"], color=color, linestyle="--", linewidth=1, label=f"{r['arm']} ({dec})")
            if row == 0:
                ax.set_title(stage)
            if row == len(panels) - 1:
                ax.set_xlabel("intervention start (fraction of budget)")
            ax.set_xlim(-0.05, 1.05)
            ax.grid(alpha=0.3)
        axes[row][0].set_ylabel(f"{ylabel} {arrow(higher.get(f'asr/{metric}'))}".strip())
    if axes[0][-1].get_legend_handles_labels()[0]:
        axes[0][-1].legend(fontsize=7, loc="best")
    _save(fig, path)


def plot_probe_layers(rows: list[dict], arms: list[str], path: Path, higher: dict[str, bool] | None = None) -> None:
    """One panel per stage: cross-validated probe AUROC (last content token, pooled over seeds) at each layer,
    a line per arm with its 95% CI band; the random-init model of the same shape is a grey dashed line."""
    probe = [r for r in rows if r["task"] == "probe" and r["seed"] == "pooled"]
    fig, axes = plt.subplots(1, len(STAGES), figsize=(4.2 * len(STAGES), 3.4), sharey=True)
    for ax, stage in zip(axes, STAGES):
        for k, arm in enumerate(arms):
            for prefix, style in (("auroc_last_layer_", "-"), ("auroc_random_init_last_layer_", "--")):
                pts = sorted((int(r["metric"].rsplit("_", 1)[1]), r) for r in probe
                             if r["stage"] == stage and r["arm"] == arm and r["metric"].startswith(prefix))
                if not pts:
                    continue
                x, color = [p[0] for p in pts], (f"C{k}" if style == "-" else "0.6")
                ax.plot(x, [p[1]["value"] for p in pts], style, marker="o" if style == "-" else None, color=color,
                        label=arm if style == "-" else ("random init" if k == 0 else None))
                if style == "-":
                    ax.fill_between(x, [p[1]["ci_low"] for p in pts], [p[1]["ci_high"] for p in pts], color=color,
                                    alpha=0.12)
        ax.axhline(0.5, color="k", linewidth=0.6)
        ax.set_title(stage)
        ax.set_xlabel("layer (0 = embeddings)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"probe AUROC, harmful vs benign twin {arrow((higher or {}).get('probe/auroc_last_best'))}"
                       .strip())
    if axes[-1].get_legend_handles_labels()[0]:
        axes[-1].legend(fontsize=7, loc="best")
    _save(fig, path)
