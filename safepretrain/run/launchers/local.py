"""`local` (default): the whole study, or one `--only` part of it, in this process, in order. Under torchrun every
rank runs it (rank 0 holds the lock and orchestrates; the study's process group spans the ranks)."""

from __future__ import annotations

from safepretrain.config import StudyConfig
from safepretrain.run.parts import Part
from safepretrain.run.study import run_study
from safepretrain.rundir import RunDir
from safepretrain.train import distributed as dp


def launch(cfg: StudyConfig, dry_run: bool, part: Part | None = None) -> int:
    if dry_run:
        return 0
    dp.start_study_group(cfg.rank_timeout_minutes, cfg.pretrain.device)
    run_study(cfg, part)
    main = dp.is_main_process()
    dp.end_study_group()
    if main:
        print(f"report: {RunDir(cfg.run_dir).report_markdown}")
    return 0
