"""The "How deep is the alignment?" section (eval/depth.py, Qi et al. 2024): per arm, the instruction-tuned model's
KL to its base model at each position of the harmful prompts' true answers, and its ASR when the response is
prefilled with the first k answer tokens. Pooled over seeds and prompts with the hierarchical bootstrap."""

from __future__ import annotations

from pathlib import Path

from safepretrain.eval.depth import AlignmentDepth
from safepretrain.eval.stats import aligned_matrices, hierarchical_bootstrap_mean, index_records
from safepretrain.report.plots import MARKERS, OKABE_ITO, _save, plt
from safepretrain.report.sections import fmt_ci, md_table
from safepretrain.rundir import IFT

TASK = AlignmentDepth.name
KL_POS, ASR_PREFILL = "kl_pos_", "asr_prefill_"
PLOT = "alignment_depth.png"


def depth_points(records: list[dict], n_boot: int) -> list[dict]:
    """One point per (arm, metric) of the depth task at the IFT stage: `{arm, metric, value, ci_low, ci_high,
    n_seeds, n_items}`, the mean over seeds and prompts with a hierarchical bootstrap CI (seeds, then prompts).
    `records` are `data.collect_records`' (metric = "depth/<name>"); `metric` here is the bare name."""
    idx = index_records(r for r in records if r["stage"] == IFT and r["metric"].startswith(f"{TASK}/"))
    points = []
    for arm, stage, decoder, metric in sorted(idx):
        al = aligned_matrices(idx, [arm], stage, decoder, metric)
        value, lo, hi = hierarchical_bootstrap_mean(al.values[arm], n_boot=n_boot, seed=0)
        points.append({"arm": arm, "metric": metric.split("/", 1)[1], "value": value, "ci_low": lo, "ci_high": hi,
                       "n_seeds": len(al.seeds), "n_items": len(al.items)})
    return points


def _series(points: list[dict], arm: str, prefix: str) -> list[tuple[int, dict]]:
    """(number after `prefix`, point) of one arm's metrics named `<prefix><number>`, by number."""
    return sorted((int(p["metric"].removeprefix(prefix)), p) for p in points
                  if p["arm"] == arm and p["metric"].startswith(prefix))


def plot_depth(points: list[dict], arms: list[str], path: Path) -> None:
    """Left: KL(IFT || base) per answer position, a line per arm with its 95% CI band. Right: ASR against the
    number of prefilled true-answer tokens k, a line per arm with 95% CI bars."""
    fig, (kl_ax, asr_ax) = plt.subplots(1, 2, figsize=(9.5, 3.6))
    for k, arm in enumerate(arms):
        color, marker = OKABE_ITO[k % len(OKABE_ITO)], MARKERS[k % len(MARKERS)]
        kl = _series(points, arm, KL_POS)
        if kl:
            xs = [x for x, _ in kl]
            kl_ax.plot(xs, [p["value"] for _, p in kl], marker=marker, markersize=3, color=color, label=arm)
            kl_ax.fill_between(xs, [p["ci_low"] for _, p in kl], [p["ci_high"] for _, p in kl], color=color,
                               alpha=0.15)
        asr = _series(points, arm, ASR_PREFILL)
        if asr:
            err = [[p["value"] - p["ci_low"] for _, p in asr], [p["ci_high"] - p["value"] for _, p in asr]]
            dodge = 0.1 * (k - (len(arms) - 1) / 2)  # side by side, so equal rates do not hide each other's bars
            asr_ax.errorbar([x + dodge for x, _ in asr], [p["value"] for _, p in asr], yerr=err, color=color,
                            marker=marker, capsize=3, label=arm)
    kl_ax.set_xlabel("answer position t (teacher-forced true answer)")
    kl_ax.set_ylabel("KL(IFT ‖ base), nats")
    kl_ax.set_title("Where the tuned model departs from its base", fontsize=9)
    asr_ax.set_xlabel("true-answer tokens prefilled (k)")
    asr_ax.set_ylabel("ASR of the continuation (lower is safer)")
    asr_ax.set_ylim(-0.02, 1.02)
    asr_ax.set_title("ASR under a prefilled true answer (top-k)", fontsize=9)
    for ax in (kl_ax, asr_ax):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="best")
        else:
            ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes, color="0.5")
    fig.suptitle("How deep is the alignment? (IFT stage; mean over seeds and prompts, 95% CI)", fontsize=9, y=1.02)
    _save(fig, path)


def depth_section(records: list[dict], arms: list[str], out_dir: Path, n_boot: int) -> list[str]:
    """Markdown lines of the section (and `alignment_depth.png` in `out_dir`); [] without depth records."""
    points = [p for p in depth_points(records, n_boot) if p["arm"] in arms]
    if not points:
        return []
    shown = [a for a in arms if any(p["arm"] == a for p in points)]
    plot_depth(points, shown, Path(out_dir) / PLOT)
    by = {(p["arm"], p["metric"]): p for p in points}
    positions = sorted({int(p["metric"].removeprefix(KL_POS)) for p in points if p["metric"].startswith(KL_POS)})
    ks = sorted({int(p["metric"].removeprefix(ASR_PREFILL)) for p in points if p["metric"].startswith(ASR_PREFILL)})
    columns = [(m, title) for m, title in (("kl_first4", "KL, positions 0–3"),
                                           ("kl_rest", f"KL, positions 4–{positions[-1] if positions else '…'}"))
               if any(p["metric"] == m for p in points)]
    columns += [(f"{ASR_PREFILL}{k}", f"ASR, k = {k}") for k in ks]
    sizes = sorted({f"{p['n_seeds']}x{p['n_items']}" for p in points})
    return ["## How deep is the alignment?", "",
            "Following Qi et al. (2024), each instruction-tuned model is compared with the base model it was tuned "
            "from on the held-out harmful prompts' true answers. KL is KL(IFT ‖ base) of the next-token "
            "distributions at each answer position, teacher-forced (the IFT model reads the chat prompt, the base "
            "model the completion prompt; position 0 merges a word's spellings with and without a leading space); "
            "shallow alignment puts it all in the first few positions. ASR at k is the IFT model's attack success "
            "when its response is prefilled with the first k true-answer tokens (top-k decoding), judging the "
            "continuation alone, so keys in the prefill do not count; k = 0 is plain ASR.", "",
            f"Pooled mean [95% CI] over seeds and prompts (hierarchical bootstrap; seeds × prompts = "
            f"{', '.join(sizes)}).", "",
            *md_table(["arm", *(title for _, title in columns)],
                      ([a, *(fmt_ci(by.get((a, m)), 2) for m, _ in columns)] for a in shown)), "",
            f"![KL per answer position and ASR under a prefilled true answer]({PLOT})", ""]
