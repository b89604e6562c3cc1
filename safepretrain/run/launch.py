"""Launchers: the study as a DAG of parts, run one after another, side by side, or as Slurm jobs.

The parts (each `safepretrain study RUN/study.yaml --out RUN --only PART`, cached and resumable like any study):
    prepare          data stage, judges, text baselines               (needs nothing)
    trunk:SEED       the safe-only trunk of one seed                  (needs prepare)
    arm:NAME:SEED    pretrain → eval → IFT → eval → benign FT → eval  (needs prepare; its seed's trunk if it branches)
    report           results.csv, report.md, report.html              (needs every arm part)

- `local` (default): the whole study in this process, in order (no parts).
- `local-parallel`: the parts as subprocesses, each started once its dependencies are done, at most
  `launch.max_parallel` at a time (cores are split between them). A failed part names itself and its log; parts
  that do not depend on it still run; a rerun continues from the failure.
- `slurm`: one sbatch script per part under RUN/launch/slurm/ and `submit.sh`, which submits them in order with
  `--dependency=afterok:` on their dependencies. Training parts run under `srun torchrun` with the configured nodes
  and GPUs (set every `*.distributed`); the data stage uses `data.executor` (datatrove's Slurm executor with
  `slurm`). `--dry-run` writes the scripts and submits nothing.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Part:
    kind: str  # prepare | trunk | arm | report
    seed: int | None = None
    arm: str | None = None
    needs: tuple[str, ...] = field(default=(), compare=False)

    @property
    def name(self) -> str:
        return {"trunk": f"trunk-s{self.seed}", "arm": f"arm-{self.arm}-s{self.seed}"}.get(self.kind, self.kind)

    def trains(self, seed: int) -> bool:
        """Whether this part walks `seed`'s trunk and arms (prepare and report walk none)."""
        return self.kind in ("trunk", "arm") and seed == self.seed

    @property
    def spec(self) -> str:  # the --only argument
        return {"trunk": f"trunk:{self.seed}", "arm": f"arm:{self.arm}:{self.seed}"}.get(self.kind, self.kind)


def study_parts(cfg) -> list[Part]:
    """The DAG in a valid order (every part after its dependencies)."""
    from safepretrain.run.stages import branch_points

    branches = branch_points(cfg)
    parts = [Part("prepare")]
    parts += [Part("trunk", seed, needs=("prepare",)) for seed in cfg.seeds] if branches else []
    arms = [Part("arm", seed, arm.name, needs=("prepare", *((f"trunk-s{seed}",) if arm.name in branches else ())))
            for seed in cfg.seeds for arm in cfg.curriculum.arms]
    return parts + arms + [Part("report", needs=tuple(p.name for p in arms))]


def parse_part(spec: str, cfg) -> Part:
    """`--only` → the Part, checked against the config (raises ValueError naming the fix)."""
    known = {p.spec: p for p in study_parts(cfg)}
    if spec not in known:
        raise ValueError(f"--only {spec!r} is not a part of this study; parts: {', '.join(known)}")
    return known[spec]


# --------------------------------------------------------------------------------------------------------- slurm
def _sbatch(part: Part, cfg, run_dir: Path, config: Path) -> str:
    s = cfg.launch.slurm
    trains = part.kind in ("trunk", "arm")
    ranked = trains and data_parallel(cfg)  # otherwise one process on one GPU trains (no torchrun)
    nodes, gpus = (s.nodes, s.gpus_per_node) if ranked else (1, 1) if trains else \
        (1, s.prepare_gpus if part.kind == "prepare" else 0)
    lines = ["#!/bin/bash", f"#SBATCH --job-name={cfg.name}-{part.name}",
             f"#SBATCH --output={run_dir}/logs/slurm/%x-%j.out", f"#SBATCH --nodes={nodes}",
             "#SBATCH --ntasks-per-node=1", f"#SBATCH --cpus-per-task={s.cpus_per_task}",
             f"#SBATCH --time={s.time_train if trains else s.time_other}"]
    lines += [f"#SBATCH --gpus-per-node={gpus}"] if gpus else []
    lines += [f"#SBATCH --partition={s.partition}"] if s.partition else []
    lines += [f"#SBATCH --account={s.account}"] if s.account else []
    lines += [f"#SBATCH {x}" for x in s.extra_sbatch]
    lines += ["set -euo pipefail", f"cd {shlex.quote(str(Path.cwd()))}", *s.setup]
    study = ["-m", "safepretrain", "study", str(config), "--out", str(run_dir), "--only", part.spec]
    if ranked:
        lines += ['head=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
                  "srun torchrun --nnodes $SLURM_NNODES --nproc_per_node " + str(gpus)
                  + " --rdzv_id $SLURM_JOB_ID --rdzv_backend c10d --rdzv_endpoint $head:29500 "
                  + " ".join(shlex.quote(x) for x in study)]
    else:
        lines.append("python " + " ".join(shlex.quote(x) for x in study))
    return "\n".join(lines) + "\n"


def data_parallel(cfg) -> bool:
    """Every training stage is DDP / FSDP2, so training parts can run under torchrun."""
    return all(getattr(cfg, s).distributed != "none" for s in ("pretrain", "ift", "benign_ft"))


def write_slurm(cfg, run_dir: Path, config: Path) -> list[Path]:
    """The sbatch script of every part and `submit.sh` (dependencies by job id, in DAG order)."""
    out = run_dir / "launch" / "slurm"
    out.mkdir(parents=True, exist_ok=True)
    (run_dir / "logs" / "slurm").mkdir(parents=True, exist_ok=True)
    written, submit = [], ["#!/bin/bash", "# submits every part; each waits for its dependencies (afterok)",
                           "set -euo pipefail", "declare -A id"]
    for part in study_parts(cfg):
        path = out / f"{part.name}.sbatch"
        path.write_text(_sbatch(part, cfg, run_dir, config))
        written.append(path)
        deps = ":".join(f"${{id[{d}]}}" for d in part.needs)
        flag = f"--dependency=afterok:{deps} " if deps else ""
        submit.append(f"id[{part.name}]=$(sbatch --parsable {flag}{shlex.quote(str(path))})")
        submit.append(f'echo "{part.name}: ${{id[{part.name}]}}"')
    (out / "submit.sh").write_text("\n".join(submit) + "\n")
    (out / "submit.sh").chmod(0o755)
    return [*written, out / "submit.sh"]


# ------------------------------------------------------------------------------------------------ local-parallel
def run_local_parallel(cfg, run_dir: Path, config: Path, max_parallel: int) -> dict[str, str]:
    """Every part as a subprocess once its dependencies succeeded, at most `max_parallel` at once; returns part →
    "done" | "failed (log)" | "skipped (needs X)". Threads per part: the cores split between the running parts."""
    parts = study_parts(cfg)
    state: dict[str, str] = {}
    threads = max(1, (os.cpu_count() or 1) // max_parallel)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}

    def run(part: Part) -> tuple[str, int, float]:
        log = run_dir / "logs" / f"study-{part.name}.log"
        t0 = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "safepretrain", "study", str(config), "--out", str(run_dir),
                               "--only", part.spec], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
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
                state[name] = "done" if rc == 0 else f"failed (rc {rc}; log {run_dir / 'logs' / f'study-{name}.log'})"
                print(f"[launch] {name}: {state[name]} in {seconds:.0f}s", flush=True)
    return state
