"""Launchers: how `safepretrain study` runs the study's parts (run/parts.py): here in order (`local`), as parallel
subprocesses (`local-parallel`), or as Slurm jobs (`slurm`).

`LAUNCHERS` maps `launch.launcher` (or `--launcher`) to `launch(cfg, dry_run) -> exit status`; adding one is a file
plus a `LAUNCHERS.register` line. Option `needs_inputs=False`: the launcher may run before the study's inputs exist
(it only writes scripts). A single `--only` part always runs with `local`.
"""

from safepretrain.config.launch import LaunchConfig, SlurmLaunchConfig
from safepretrain.registry import Registry
from safepretrain.run.launchers import local, local_parallel, slurm

LAUNCHERS: Registry = Registry("launcher")
LAUNCHERS.register("local", local.launch, settings=LaunchConfig)
LAUNCHERS.register("local-parallel", local_parallel.launch, settings=LaunchConfig)
LAUNCHERS.register("slurm", slurm.launch, settings=SlurmLaunchConfig, section="slurm", needs_inputs=False)

__all__ = ["LAUNCHERS"]
