"""`slurm`: one sbatch script per part under RUN/launch/slurm/ and `submit.sh`, which submits them in order with
`--dependency=afterok:` on their dependencies. Training parts run under `srun torchrun` with the configured nodes and
GPUs (set every `*.distributed`); the data stage uses `data.executor` (datatrove's Slurm executor with `slurm`).
`--dry-run` writes the scripts and submits nothing. Settings: `launch.slurm`.
"""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

from safepretrain.config import StudyConfig
from safepretrain.run.parts import Part, data_parallel, prepare_launch, study_parts
from safepretrain.rundir import RunDir


def sbatch_quote(value: str) -> str:
    """An #SBATCH option value as sbatch reads it back: double-quoted, `\\` and `"` escaped (sbatch splits its
    directives at whitespace and ends them at an unquoted `#`, so a run directory with a space lost its log path)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _sbatch(part: Part, cfg, run_dir: Path, config: Path) -> str:
    s = cfg.launch.slurm
    trains = part.kind in ("trunk", "arm")
    ranked = trains and data_parallel(cfg)  # otherwise one process on one GPU trains (no torchrun)
    nodes, gpus = (s.nodes, s.gpus_per_node) if ranked else (1, 1) if trains else \
        (1, s.prepare_gpus if part.kind == "prepare" else 0)
    lines = ["#!/bin/bash", f"#SBATCH --job-name={sbatch_quote(f'{cfg.name}-{part.name}')}",
             f"#SBATCH --output={sbatch_quote(f'{RunDir(run_dir).slurm_logs}/%x-%j.out')}", f"#SBATCH --nodes={nodes}",
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


def write_slurm(cfg, run_dir: Path, config: Path) -> list[Path]:
    """The sbatch script of every part and `submit.sh` (dependencies by job id, in DAG order)."""
    rundir = RunDir(run_dir)
    out = rundir.slurm_scripts
    out.mkdir(parents=True, exist_ok=True)
    rundir.slurm_logs.mkdir(parents=True, exist_ok=True)
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


def launch(cfg: StudyConfig, dry_run: bool) -> int:
    """Write the scripts (even before the study's inputs exist) and, unless `dry_run`, submit them."""
    scripts = write_slurm(cfg, cfg.run_dir.resolve(), prepare_launch(cfg).resolve())
    print("slurm scripts:\n" + "\n".join(f"  {p}" for p in scripts))
    if not dry_run:
        return subprocess.run(["bash", str(scripts[-1])]).returncode
    print(f"not submitted (--dry-run); submit with: bash {shlex.quote(str(scripts[-1]))}")
    return 0
