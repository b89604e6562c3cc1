"""Report plots (matplotlib, Agg backend): ASR vs start fraction per stage; probe AUROC vs layer."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from cycler import cycler  # noqa: E402

STAGES = ["base", "ift", "benign_ft"]
# Okabe & Ito's colour-blind-safe palette: every plot's "C0", "C1", ... come from it
OKABE_ITO = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000"]
matplotlib.rcParams["axes.prop_cycle"] = cycler(color=OKABE_ITO)


def _save(fig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)
    tmp.replace(path)


def plot_asr_vs_start(rows: list[dict], starts: dict[str, float | None], path: Path) -> None:
    """Rows: attack success rate and refusal rate; columns: stages. Each panel plots the metric against the
    intervention start fraction (one point per arm and seed, bars = 95% CI), a line per decoder; arms
    without a start (raw) are dashed horizontal references."""
    panels = [("asr", "attack success rate ↓"), ("refusal_rate", "refusal rate (harmful prompts) ↑")]
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
        axes[row][0].set_ylabel(ylabel)
    if axes[0][-1].get_legend_handles_labels()[0]:
        axes[0][-1].legend(fontsize=7, loc="best")
    _save(fig, path)


def plot_probe_layers(rows: list[dict], arms: list[str], path: Path) -> None:
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
    axes[0].set_ylabel("probe AUROC, harmful vs benign twin ↑")
    if axes[-1].get_legend_handles_labels()[0]:
        axes[-1].legend(fontsize=7, loc="best")
    _save(fig, path)
