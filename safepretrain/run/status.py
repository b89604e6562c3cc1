"""`safepretrain study --status`: every step of a study with its state, wall time and, for a failure, its log.

States, from the files each step leaves (`StepMarker`) and the run's lock:
- `done`: the step's `done.json` is there (its wall seconds from it);
- `running`: started (`.config_hash`), not done, and a study holds the run's lock;
- `failed`: the step the last study named in `failed.json` when it stopped with an error;
- `interrupted`: started, not done, no study running (killed): a rerun resumes it;
- `pending`: not started.
A rerun (`safepretrain study` with the same config) skips done steps and continues from the first other one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from safepretrain.config import StudyConfig
from safepretrain.run.stages import branch_points
from safepretrain.rundir import BASE, CURVES, HARMFUL_FT, STAGES, TRAJECTORY, ArmRun, RunDir, RunLock
from safepretrain.utils import read_json


@dataclass
class StepState:
    name: str
    folder: Path
    state: str
    seconds: float | None = None
    detail: str = ""


def study_steps(cfg: StudyConfig) -> list[tuple[str, Path]]:
    """(name, folder) of every step `run_study` runs, in its order."""
    rundir = RunDir(cfg.run_dir)
    steps = [("scoring", rundir.scoring), ("data", rundir.data), ("judge", rundir.judge)]
    for seed in cfg.seeds:
        if branch_points(cfg):
            steps.append((f"trunk s{seed}", rundir.trunk(seed)))
        for arm in cfg.curriculum.arms:
            run = ArmRun(arm, seed, rundir)
            for stage, name in STAGES:
                if stage == HARMFUL_FT and not cfg.runs_harmful_ft:
                    continue
                steps.append((f"{stage} {run.label}", run.stage_dir(stage)))
                steps.append((f"eval {name} {run.label}", run.eval_dir(name)))
                if name == BASE and cfg.eval.trajectory:
                    steps.append((f"eval trajectory {run.label}", run.eval_dir(TRAJECTORY)))
                if stage in CURVES:
                    steps.append((f"eval {stage} curve {run.label}", run.eval_dir(CURVES[stage])))
    steps.append(("report", rundir.report))
    return steps


def study_status(cfg: StudyConfig) -> list[StepState]:
    rundir = RunDir(cfg.run_dir)
    run_dir = rundir.root
    running = RunLock.held(run_dir)
    failures = [read_json(f) for f in rundir.failed_files()]  # a study's, or each launched part's
    failures = {rundir.stored(f["step"]): f for f in failures if f.get("step")}
    out = []
    for name, folder in study_steps(cfg):
        done = folder / "done.json"
        if name == "report":
            state = "done" if rundir.report_markdown.is_file() and not running else "pending"
            out.append(StepState(name, folder, state))
            continue
        if done.is_file():
            info = read_json(done)
            out.append(StepState(name, folder, "done", info.get("step_seconds", info.get("wall_s"))))
        elif (folder / ".config_hash").is_file():
            failed = next((f for where, f in failures.items() if where == folder or folder in where.parents), None)
            if failed and not running:  # the step, or one of its sub-steps, failed
                detail = f"{failed['error']}; log {rundir.stored(failed['log'])}"
                out.append(StepState(name, folder, "failed", detail=detail))
            else:
                out.append(StepState(name, folder, "running" if running else "interrupted"))
        else:
            out.append(StepState(name, folder, "pending"))
    return out


def status_table(states: list[StepState], run_dir: Path) -> str:
    counts = {s: sum(1 for x in states if x.state == s) for s in ("done", "running", "failed", "interrupted",
                                                                    "pending")}
    lines = [f"{run_dir}: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n), ""]
    for x in states:
        took = f"{x.seconds:8.1f}s" if x.seconds is not None else " " * 9
        lines.append(f"{x.state:<12}{took}  {x.name:<40} {os.path.relpath(x.folder, run_dir)}"
                     + (f"\n{'':23}{x.detail}" if x.detail else ""))
    return "\n".join(lines)
