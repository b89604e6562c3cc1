"""The study as a DAG of parts, which the launchers run (run/launchers/):

    prepare          data stage, judges, text baselines               (needs nothing)
    trunk:SEED       the safe-only trunk of one seed                  (needs prepare)
    arm:NAME:SEED    pretrain → eval → IFT → eval → benign FT → eval  (needs prepare; its seed's trunk if it branches)
    report           results.csv, report.md, report.html              (needs every arm part)

Each part is `safepretrain study RUN/study.yaml --out RUN --only PART`, cached and resumable like any study.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from safepretrain.config import StudyConfig, dump_config
from safepretrain.run.stages import branch_points
from safepretrain.rundir import TRAINED_STAGES, RunDir, RunLock
from safepretrain.utils import write_text_atomic


class LaunchError(RuntimeError):
    """A launch that did not finish the study; the message names the parts and what to do."""


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


def data_parallel(cfg) -> bool:
    """Every training stage is DDP / FSDP2, so training parts can run under torchrun."""
    return all(getattr(cfg, s).distributed != "none" for s in TRAINED_STAGES)


def training_ranks(cfg) -> int:
    """Processes that train each model of a launched study (its manifest): the Slurm launcher runs data-parallel
    training parts under torchrun on every GPU of its nodes; every other launched part trains in one process."""
    s = cfg.launch.slurm
    return s.nodes * s.gpus_per_node if cfg.launch.launcher == "slurm" and data_parallel(cfg) else 1


def prepare_launch(cfg: StudyConfig) -> Path:
    """Mark the run directory (under its lock) and write the resolved config every part reads; its path."""
    rundir = RunDir(cfg.run_dir)
    with RunLock(rundir.root):
        write_text_atomic(rundir.study_yaml, dump_config(cfg))
    return rundir.study_yaml
