"""How a study's parts are launched (run/launchers)."""

from __future__ import annotations

from pydantic import Field

from safepretrain.config.base import Strict


class SlurmLaunchConfig(Strict):
    """Resources of the generated sbatch scripts (`launch.launcher: slurm`)."""

    partition: str | None = None
    """#SBATCH --partition of every part (null = the cluster's default)."""
    account: str | None = None
    """#SBATCH --account (null = none)."""
    nodes: int = Field(1, gt=0)
    """Nodes of each training part (torchrun over all of them)."""
    gpus_per_node: int = Field(8, gt=0)
    """GPUs per node of a training part: torchrun's --nproc_per_node."""
    prepare_gpus: int = Field(0, ge=0)
    """GPUs of the prepare part (the data stage's scorer and generator, when they run on this node)."""
    cpus_per_task: int = Field(16, gt=0)
    """#SBATCH --cpus-per-task of every part."""
    time_train: str = "2-00:00:00"
    """Time limit of a training part (Slurm format); a part killed by it resumes from its checkpoint on resubmit."""
    time_other: str = "12:00:00"
    """Time limit of the prepare and report parts."""
    setup: list[str] = []
    """Shell lines run before the command, e.g. `source .venv/bin/activate`."""
    extra_sbatch: list[str] = []
    """More #SBATCH options, e.g. `--qos=high`."""


class LaunchConfig(Strict):
    """`local`: the whole study in one process, in order. `local-parallel`: its parts as subprocesses, each once
    its dependencies are done. `slurm`: one sbatch script per part with dependencies (launch.py)."""

    launcher: str = "local"
    """How `safepretrain study` runs, by name from the launcher registry (run/launchers): `local`, `local-parallel`,
    `slurm` (the CLI's --launcher overrides it)."""
    max_parallel: int = Field(2, gt=0)
    """`local-parallel`: parts running at once. Each uses `threads` CPU threads, so set `threads` to cores /
    max_parallel for speed (a `local` run with the same `threads` gives the same numbers)."""
    threads: int | None = Field(None, gt=0)
    """Torch CPU threads of every process of the study, whatever the launcher (recorded in manifest.json): CPU
    reductions split their work by thread, so the count changes the numbers. null = OMP_NUM_THREADS when set, else
    the CPUs the process may use."""
    slurm: SlurmLaunchConfig = SlurmLaunchConfig()
