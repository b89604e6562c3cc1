"""`safepretrain study --status`: every step of a study with its state, wall time and, for a failure, its log.

States, from the files each step leaves (`StepMarker`) and the run's lock:
- `done`: the step's `done.json` is there (its wall seconds from it) and every output it recorded exists;
- `missing`: done, but an output it recorded (a checkpoint file) is gone: a rerun recomputes the step;
- `corrupt`: its `done.json` cannot be read as a step marker (truncated, edited): a rerun recomputes the step;
- `running`: started (`.config_hash`), not done, and a study holds the run's lock;
- `failed`: the step the last study named in `failed.json` when it stopped with an error;
- `interrupted`: started, not done, no study running (killed): a rerun resumes it;
- `pending`: not started.
A rerun (`safepretrain study` with the same config) skips done steps and continues from the first other one.
A folder that is not a run directory (no run marker) is refused: every step would read as pending.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from safepretrain.config import StudyConfig
from safepretrain.run.stages import branch_points
from safepretrain.rundir import (
    BASE,
    CURVES,
    HARMFUL_FT,
    RUN_MARKER,
    STAGES,
    TRAJECTORY,
    ArmRun,
    RunDir,
    RunDirError,
    RunLock,
)
from safepretrain.utils import CorruptFileError, read_json, read_marker

STATES = ("done", "running", "failed", "interrupted", "missing", "corrupt", "pending")


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
    scoring = Path(cfg.data.scores_from) if cfg.data.scores_from else rundir.scoring  # reused: that run's step
    steps = [("scoring", scoring), ("data", rundir.data), ("judge", rundir.judge)]
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


def _failures(rundir: RunDir) -> dict[Path, dict]:
    """Failed step folder → its failed.json (a study's, or each launched part's); one that cannot be read only loses
    its detail, never the rest of the status."""
    out = {}
    for path in rundir.failed_files():
        try:
            f = read_json(path)
        except CorruptFileError:
            continue
        if isinstance(f, dict) and isinstance(f.get("step"), str):
            out[rundir.stored(f["step"])] = f
    return out


def _done_state(name: str, folder: Path, rundir: RunDir) -> StepState:
    """A step with a `done.json`: done, or corrupt (unreadable marker), or missing (a recorded output is gone)."""
    try:
        info = read_marker(folder / "done.json")
    except CorruptFileError as err:
        return StepState(name, folder, "corrupt", detail=f"{err}; a rerun recomputes it")
    seconds = info.get("step_seconds", info.get("wall_s"))
    seconds = seconds if isinstance(seconds, int | float) else None
    gone = [rel for rel in info.get("checksums", {}) if not (folder / rel).is_file()]
    if isinstance(info.get("checkpoint"), str) and not rundir.stored(info["checkpoint"]).exists():
        gone.insert(0, info["checkpoint"])
    if gone:
        more = f" and {len(gone) - 1} more" if len(gone) > 1 else ""
        return StepState(name, folder, "missing", seconds,
                         f"{gone[0]}{more}, recorded when the step finished, is gone; a rerun recomputes the step")
    return StepState(name, folder, "done", seconds)


def study_status(cfg: StudyConfig) -> list[StepState]:
    rundir = RunDir(cfg.run_dir)
    run_dir = rundir.root
    if not rundir.marker.is_file():  # else every step of the config would read as pending
        what = "does not exist" if not run_dir.exists() else f"is not a safepretrain run directory (no {RUN_MARKER})"
        raise RunDirError(f"--out {run_dir} {what}, so no study has run there: give the --out folder of a study")
    running = RunLock.held(run_dir)
    failures = _failures(rundir)
    out = []
    for name, folder in study_steps(cfg):
        done = folder / "done.json"
        if name == "report":
            state = "done" if rundir.report_markdown.is_file() and not running else "pending"
            out.append(StepState(name, folder, state))
            continue
        if done.is_file():
            out.append(_done_state(name, folder, rundir))
        elif (folder / ".config_hash").is_file():
            failed = next((f for where, f in failures.items() if where == folder or folder in where.parents), None)
            if failed and not running:  # the step, or one of its sub-steps, failed
                detail = f"{failed.get('error')}; log {rundir.stored(str(failed.get('log')))}"
                out.append(StepState(name, folder, "failed", detail=detail))
            else:
                out.append(StepState(name, folder, "running" if running else "interrupted"))
        else:
            out.append(StepState(name, folder, "pending"))
    return out


def status_table(states: list[StepState], run_dir: Path) -> str:
    counts = {s: sum(1 for x in states if x.state == s) for s in STATES}
    lines = [f"{run_dir}: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n), ""]
    for x in states:
        took = f"{x.seconds:8.1f}s" if x.seconds is not None else " " * 9
        lines.append(f"{x.state:<12}{took}  {x.name:<40} {os.path.relpath(x.folder, run_dir)}"
                     + (f"\n{'':23}{x.detail}" if x.detail else ""))
    return "\n".join(lines)
