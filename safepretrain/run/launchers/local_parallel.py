"""`local-parallel`: the parts as subprocesses, each started once its dependencies are done, at most
`launch.max_parallel` at a time. Each part fixes its own thread count (`launch.threads`, run/study.py), exactly as a
`local` run does, so both give byte-identical results. A failed part names itself and its log; parts that do not
depend on it still run; a rerun continues from the failure.
"""

from __future__ import annotations

import subprocess
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path

from safepretrain.config import StudyConfig
from safepretrain.run.parts import LaunchError, Part, prepare_launch, study_parts
from safepretrain.rundir import RunDir


def run_local_parallel(cfg, run_dir: Path, config: Path, max_parallel: int) -> dict[str, str]:
    """Every part as a subprocess once its dependencies succeeded, at most `max_parallel` at once; returns part →
    "done" | "failed (log)" | "skipped (needs X)". The parts inherit this environment: a share of the cores set here
    (OMP_NUM_THREADS) made their numbers differ from a local run's; each part fixes `launch.threads` itself."""
    parts = study_parts(cfg)
    state: dict[str, str] = {}

    def run(part: Part) -> tuple[str, int, float]:
        log = RunDir(run_dir).log_file(part.name)
        t0 = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "safepretrain", "study", str(config), "--out", str(run_dir),
                               "--only", part.spec], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True)
        if done.returncode:
            log.parent.mkdir(parents=True, exist_ok=True)
            with open(log, "a") as f:
                f.write(done.stderr[-20000:])
        return part.name, done.returncode, time.perf_counter() - t0

    with ThreadPoolExecutor(max_parallel) as pool:
        running: dict = {}
        while len(state) < len(parts):
            for part in parts:
                if part.name in state or part.name in running.values():
                    continue
                failed = [d for d in part.needs if d in state and state[d] != "done"]
                if failed:
                    state[part.name] = f"skipped (needs {failed[0]})"
                elif all(state.get(d) == "done" for d in part.needs) and len(running) < max_parallel:
                    running[pool.submit(run, part)] = part.name
            if not running:
                continue
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for fut in finished:
                name, rc, seconds = fut.result()
                del running[fut]
                state[name] = "done" if rc == 0 else f"failed (rc {rc}; log {RunDir(run_dir).log_file(name)})"
                print(f"[launch] {name}: {state[name]} in {seconds:.0f}s", flush=True)
    return state


def launch(cfg: StudyConfig, dry_run: bool) -> int:
    if dry_run:
        return 0
    state = run_local_parallel(cfg, cfg.run_dir, prepare_launch(cfg), cfg.launch.max_parallel)
    bad = {k: v for k, v in state.items() if v != "done"}
    if bad:
        raise LaunchError("parts not done: " + "; ".join(f"{k}: {v}" for k, v in bad.items())
                          + ". Finished parts stay valid: rerun to continue")
    print(f"report: {RunDir(cfg.run_dir).report_markdown}")
    return 0
