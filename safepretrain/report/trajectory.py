"""The safety trajectory: ASR, the refusal margin and probe AUROC over pretraining tokens per arm, with each arm's
switch marked (`eval.trajectory`). Points are the saved pretraining checkpoints (eval/<arm>/seed<k>/
pretrain_trajectory/) and the final model (the `base` evaluation)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from safepretrain.config import StudyConfig
from safepretrain.utils import read_json

# (task, decoder, metric, axis label)
METRICS = [("asr", "topk", "asr", "ASR, top-k (fraction) ↓"),
           ("likelihood", "none", "compliance_gap", "refusal margin (nats/token) ↑"),
           ("probe", "none", "auroc_best", "probe AUROC, best layer ↑")]


def collect_trajectory(run_dir: Path, cfg: StudyConfig) -> list[dict]:
    """{arm, seed, tokens, task, metric, value, ci_low, ci_high} at every trajectory point and the final model."""
    arms = {a.name for a in cfg.curriculum.arms}
    final_tokens = cfg.pretrain_steps * cfg.pretrain.batch_size * cfg.pretrain.seq_len
    wanted = {(t, d, m) for t, d, m, _ in METRICS}
    paths = [(p, None) for p in (run_dir / "eval").glob("*/seed*/pretrain_trajectory/step_*/*/*/results.json")]
    paths += [(p, final_tokens) for p in (run_dir / "eval").glob("*/seed*/base/*/*/results.json")]
    out = []
    for path, tokens in sorted(paths):
        res = read_json(path)
        if res["arm"] not in arms:
            continue
        for r in res["rows"]:
            if (res["task"], res["decoder"], r["metric"]) in wanted and r.get("judge") in (None, res.get("judge")):
                out.append({"arm": res["arm"], "seed": res["seed"], "tokens": res.get("tokens", tokens),
                            "task": res["task"], "metric": r["metric"], "value": r["value"],
                            "ci_low": r["ci_low"], "ci_high": r["ci_high"]})
    return out


def plot_trajectory(points: list[dict], cfg: StudyConfig, path: Path) -> None:
    """One panel per metric; a line per arm (mean over seeds; band = the seeds' range, or the 95% CI with one
    seed); a dotted vertical line in the arm's colour at its switch."""
    from safepretrain.report.plots import OKABE_ITO, _save, plt

    tps = cfg.pretrain.batch_size * cfg.pretrain.seq_len
    fig, axes = plt.subplots(1, len(METRICS), figsize=(4.6 * len(METRICS), 3.4))
    for ax, (task, _, metric, label) in zip(axes, METRICS):
        for k, arm in enumerate(cfg.curriculum.arms):
            color = OKABE_ITO[k % len(OKABE_ITO)]
            sel = [p for p in points if p["arm"] == arm.name and p["task"] == task and p["metric"] == metric]
            xs = sorted({p["tokens"] for p in sel})
            if not xs:
                continue
            by_x = [[p for p in sel if p["tokens"] == x] for x in xs]
            mean = [np.mean([p["value"] for p in ps]) for ps in by_x]
            several = max(len(ps) for ps in by_x) > 1
            lo = [min(p["value"] if several else p["ci_low"] for p in ps) for ps in by_x]
            hi = [max(p["value"] if several else p["ci_high"] for p in ps) for ps in by_x]
            ax.plot(xs, mean, marker="o", color=color, label=arm.name)
            ax.fill_between(xs, lo, hi, color=color, alpha=0.15)
            switch = cfg.switch_step(arm)
            if switch is not None:
                ax.axvline(switch * tps, color=color, linestyle=":", linewidth=1.2)
        ax.set_xlabel("pretraining tokens")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, title="arm (dotted: its switch)", title_fontsize=7)
    fig.suptitle("Safety trajectory over pretraining (base models; band: seeds' range, or 95% CI for one seed)",
                 fontsize=9, y=1.03)
    _save(fig, path)


def trajectory_section(run_dir: Path, cfg: StudyConfig) -> list[str]:
    points = collect_trajectory(run_dir, cfg)
    if not cfg.eval.trajectory or not points:
        return []
    from safepretrain.report.build import write_csv

    out = run_dir / "report"
    write_csv(points, out / "trajectory.csv", columns=list(points[0]))
    plot_trajectory(points, cfg, out / "trajectory.png")
    steps = sorted({p["tokens"] for p in points})
    return ["## Safety trajectories over pretraining", "",
            f"Every saved pretraining checkpoint ({len(steps)} points from {steps[0]:,} to {steps[-1]:,} tokens), "
            "evaluated as a base model: ASR under top-k (generation seeds), the refusal margin (likelihood "
            "compliance gap) and probe AUROC. The dotted line in an arm's colour is its switch. Values per point: "
            "[trajectory.csv](trajectory.csv).", "", "![Safety trajectory](trajectory.png)", ""]
