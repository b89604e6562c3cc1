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

import fcntl
import os
from dataclasses import dataclass
from pathlib import Path

from safepretrain.config import StudyConfig
from safepretrain.run.rundir import LOCK_FILE, STAGES, ArmRun
from safepretrain.run.stages import branch_points
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
    run_dir = cfg.run_dir
    steps = [("scoring", run_dir / "scoring"), ("data", run_dir / "data"), ("judge", run_dir / "judge")]
    for seed in cfg.seeds:
        if branch_points(cfg):
            steps.append((f"trunk s{seed}", run_dir / "trunk" / f"seed{seed}"))
        for arm in cfg.curriculum.arms:
            run = ArmRun(arm, seed, run_dir)
            for stage, name in STAGES:
                steps.append((f"{stage} {run.label}", run.stage_dir(stage)))
                steps.append((f"eval {name} {run.label}", run.eval_dir(name)))
                if name == "base" and cfg.eval.trajectory:
                    steps.append((f"eval trajectory {run.label}", run.eval_dir("pretrain_trajectory")))
            steps.append((f"eval benign_ft curve {run.label}", run.eval_dir("benign_ft_curve")))
    steps.append(("report", run_dir / "report"))
    return steps


def _lock_held(run_dir: Path) -> bool:
    try:
        fd = os.open(run_dir / LOCK_FILE, os.O_RDWR)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def study_status(cfg: StudyConfig) -> list[StepState]:
    run_dir = cfg.run_dir
    running = _lock_held(run_dir)
    failures = [read_json(f) for f in sorted(run_dir.glob("failed*.json"))]  # a study's, or each launched part's
    failures = {run_dir / f["step"]: f for f in failures if f.get("step")}
    out = []
    for name, folder in study_steps(cfg):
        done = folder / "done.json"
        if name == "report":
            state = "done" if (folder / "report.md").is_file() and not running else "pending"
            out.append(StepState(name, folder, state))
            continue
        if done.is_file():
            info = read_json(done)
            out.append(StepState(name, folder, "done", info.get("step_seconds", info.get("wall_s"))))
        elif (folder / ".config_hash").is_file():
            failed = next((f for where, f in failures.items() if where == folder or folder in where.parents), None)
            if failed and not running:  # the step, or one of its sub-steps, failed
                detail = f"{failed['error']}; log {run_dir / failed['log']}"
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
