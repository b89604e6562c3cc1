"""The safety trajectory: ASR, the refusal margin and probe AUROC over pretraining tokens per arm, with each arm's
switch marked (`eval.trajectory`). Points are the saved pretraining checkpoints (eval/<arm>/seed<k>/
pretrain_trajectory/) and the final model (the `base` evaluation). Its metrics are the sections of
`report/sections.py` in the trajectory group; their arrows come from the tasks' declared directions."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from safepretrain.config import StudyConfig
from safepretrain.report.data import as_rundir
from safepretrain.report.plots import OKABE_ITO, _save, plt
from safepretrain.report.sections import TRAJECTORY_GROUP, arrow, sections_of
from safepretrain.rundir import RunDir
from safepretrain.utils import read_json, write_csv


def collect_trajectory(run_dir: Path | RunDir, cfg: StudyConfig) -> list[dict]:
    """{arm, seed, tokens, task, metric, value, ci_low, ci_high} at every trajectory point and the final model."""
    rd = as_rundir(run_dir)
    arms = {a.name for a in cfg.curriculum.arms}
    final_tokens = cfg.pretrain_steps * cfg.tokens_per_step
    wanted = {(s.task, s.decoder, s.metric) for s in sections_of(TRAJECTORY_GROUP)}
    paths = [(p, None) for p in rd.trajectory_results()]
    paths += [(p, final_tokens) for p in rd.base_results()]
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


def plot_trajectory(points: list[dict], cfg: StudyConfig, path: Path, higher: dict[str, bool] | None = None) -> None:
    """One panel per metric; a line per arm (mean over seeds; band = the seeds' range, or the 95% CI with one
    seed); a dotted vertical line in the arm's colour at its switch."""
    higher = higher or {}
    tps = cfg.tokens_per_step
    sections = sections_of(TRAJECTORY_GROUP)
    fig, axes = plt.subplots(1, len(sections), figsize=(4.6 * len(sections), 3.4), squeeze=False)
    for ax, sec in zip(axes[0], sections):
        for k, arm in enumerate(cfg.curriculum.arms):
            color = OKABE_ITO[k % len(OKABE_ITO)]
            sel = [p for p in points if p["arm"] == arm.name and p["task"] == sec.task and p["metric"] == sec.metric]
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
        ax.set_ylabel(f"{sec.title or sec.key} {arrow(higher.get(sec.key))}".strip())
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7, title="arm (dotted: its switch)", title_fontsize=7)
    fig.suptitle("Safety trajectory over pretraining (base models; band: seeds' range, or 95% CI for one seed)",
                 fontsize=9, y=1.03)
    _save(fig, path)


def trajectory_section(run_dir: Path | RunDir, cfg: StudyConfig, higher: dict[str, bool] | None = None) -> list[str]:
    rd = as_rundir(run_dir)
    points = collect_trajectory(rd, cfg)
    if not cfg.eval.trajectory or not points:
        return []
    write_csv(points, rd.report / "trajectory.csv", columns=list(points[0]))
    plot_trajectory(points, cfg, rd.report / "trajectory.png", higher)
    steps = sorted({p["tokens"] for p in points})
    return [f"## {TRAJECTORY_GROUP}", "",
            f"Every saved pretraining checkpoint ({len(steps)} points from {steps[0]:,} to {steps[-1]:,} tokens), "
            "evaluated as a base model: ASR under top-k (generation seeds), the refusal margin (likelihood "
            "compliance gap) and probe AUROC. The dotted line in an arm's colour is its switch. Values per point: "
            "[trajectory.csv](trajectory.csv).", "", "![Safety trajectory](trajectory.png)", ""]
