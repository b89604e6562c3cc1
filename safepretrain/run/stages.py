"""The trained stages of one (arm, seed): pretraining (optionally branched from a shared trunk),
instruction tuning and benign finetuning. Each is a cached step (`StepMarker`): a finished stage whose
inputs did not change is skipped, and a killed one resumes from its last checkpoint.

**Trunk branching.** Arms of one seed whose first steps are all safe-only (start_20, start_60, safe_only)
read identical batches up to their switch: the sampler is a pure function of (seed, step) and the
safe-only phase has the same weights in every arm. With `curriculum.share_safe_prefix`, one trunk run
trains that shared prefix once and leaves a checkpoint at every arm's switch step; each arm copies the
checkpoint (weights, optimizer, step) and its metrics up to the switch, and resumes with its own schedule.
In fp32 this is bit-identical to a separate run (tested); it also pairs the arms on identical weights.

**Under torchrun** every rank walks these functions and calls `train()`; rank 0 alone reads and writes the step
markers (`SharedStepMarker`) and copies checkpoints (`rank_zero_only`), and every rank gets its decision.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from safepretrain.config import ArmConfig, ModelConfig, StudyConfig
from safepretrain.data.chat import ChatBatches
from safepretrain.data.pipeline import DataArtifacts, data_hash
from safepretrain.rundir import (
    HARMFUL_FT,
    IFT,
    PRETRAIN,
    ArmRun,
    RunDir,
    StageOutput,
    inside_run,
    iter_steps,
    relative_to_run,
    step_folder,
)
from safepretrain.train.checkpoint import latest_checkpoint
from safepretrain.train.curriculum import CurriculumSampler, arm_schedule, check_data_budget, match_dose
from safepretrain.train.distributed import SharedStepMarker, rank_zero_only
from safepretrain.train.loop import lr_at, train
from safepretrain.train.posttrain import benign_ft_examples, harmful_ft_examples, ift_examples
from safepretrain.utils import files_in, log, write_json
from safepretrain.world import World


def _pretrain_hash(cfg: StudyConfig, *extra) -> str:
    return cfg.stage_hash("world", "data", "tokenizer", "curriculum", "model", PRETRAIN,
                          extra=[data_hash(cfg), *extra])


def _finished(marker: SharedStepMarker, run_dir: Path) -> StageOutput:
    return StageOutput(inside_run(marker.info()["checkpoint"], run_dir), marker.hash)


def _sampler(cfg: StudyConfig, arm: ArmConfig, data: DataArtifacts, seed: int) -> CurriculumSampler:
    stream_tokens = {s: len(sh) for s, sh in data.shards.items()}
    check_data_budget(cfg.curriculum, stream_tokens)  # before the first step: the trunk and every arm build here
    schedule = arm_schedule(arm, cfg.curriculum, stream_tokens)
    return CurriculumSampler(schedule, data.shards, cfg.pretrain.batch_size, cfg.pretrain.seq_len, seed)


def branch_points(cfg: StudyConfig) -> dict[str, int]:
    """Arm name → the step at which it leaves the shared safe-only trunk (its switch step, or the last step
    for arms that never switch). Empty when sharing is off or fewer than two arms would share."""
    if not cfg.curriculum.share_safe_prefix:
        return {}
    points = {}
    for arm in cfg.curriculum.arms:
        if arm.data == "curriculum" and arm.start > 0 and arm.phases is None:  # explicit phases: own first phase
            switch = cfg.switch_step(arm)
            points[arm.name] = cfg.pretrain_steps if switch is None else switch
    return points if len(points) >= 2 else {}


def train_trunk(cfg: StudyConfig, rundir: RunDir, data: DataArtifacts, model_cfg: ModelConfig,
                seed: int) -> Path | None:
    """Train the safe-only trunk of `seed` up to the last branch point; returns its ckpt folder."""
    points = sorted(set(branch_points(cfg).values()))
    if not points:
        return None
    out = rundir.trunk(seed)
    marker = SharedStepMarker(out, _pretrain_hash(cfg, "trunk", seed, points))
    if not marker.is_done():
        marker.start()
        sampler = _sampler(cfg, ArmConfig(name="trunk", start=1.0), data, seed)
        log.info(f"[pretrain trunk s{seed}] safe-only trunk to step {points[-1]}; arms branch at steps {points}")
        train(cfg.pretrain, model_cfg, sampler, out, seed=seed, label=f"pretrain trunk s{seed}",
              stop_at=points[-1], save_at=tuple(points), tokenizer_sha256=data.tokenizer.sha256)
        marker.finish(outputs=files_in(out / "ckpt"), branch_steps=points)
    return out / "ckpt"


@rank_zero_only
def _branch(trunk: Path, step: int, out: Path) -> None:
    """Start `out` from the trunk's checkpoint at `step`: copy the checkpoint and the metrics up to it."""
    if latest_checkpoint(out / "ckpt") is not None:
        return  # already branched (a resumed run continues from its own checkpoints)
    source = trunk / step_folder(step)
    shutil.copytree(source, out / "ckpt" / source.name)
    lines = (trunk.parent / "metrics.jsonl").read_text().splitlines()
    keep = [ln for ln in lines if ln.strip() and json.loads(ln)["step"] <= step]
    (out / "metrics.jsonl").write_text("".join(ln + "\n" for ln in keep))


def pretrain_arm(cfg: StudyConfig, run: ArmRun, data: DataArtifacts, model_cfg: ModelConfig,
                 trunk: Path | None) -> StageOutput:
    out = run.stage_dir(PRETRAIN)
    marker = SharedStepMarker(out, _pretrain_hash(cfg, run.arm.model_dump(), run.seed))
    if marker.is_done():
        return _finished(marker, run.run_dir)
    marker.start()
    sampler = _sampler(cfg, run.arm, data, run.seed)
    label = f"pretrain {run.label}"
    switch = sampler.schedule.switch_step(sampler.tokens_per_step)
    log.info(f"[{label}] {sampler.total_steps} steps; interventions "
             + ("never (raw data)" if run.arm.data == "raw" else "never start" if switch is None
                else f"start at step {switch} (token {switch * sampler.tokens_per_step:,})"))
    for phase in sampler.schedule.phases:
        log.info(f"[{label}] phase {phase.name} from token {phase.start_token:,}: "
                 + ", ".join(f"{s} {w:.1%}" for s, w in phase.weights.items()))
    if sampler.schedule.blend:
        log.info(f"[{label}] each phase blends in linearly over {sampler.schedule.blend:,} tokens")
    for ramp in sampler.schedule.ramps:
        log.info(f"[{label}] {ramp.stream} ramps in linearly over tokens {ramp.start_token:,}-{ramp.end_token:,}")
    if cfg.curriculum.dose == "matched" and run.arm.data == "curriculum":
        dose = match_dose(cfg.curriculum, {s: len(sh) for s, sh in data.shards.items()})
        log.info(f"[{label}] dose matched: {dose.target:,.0f} expected intervention tokens per arm"
                 + (f"; left out (no interventions): {list(dose.excluded)}" if dose.excluded else ""))
    branch = branch_points(cfg).get(run.arm.name)
    if trunk is not None and branch is not None:
        log.info(f"[{label}] branching from the safe-only trunk at step {branch}")
        _branch(trunk, branch, out)
    accounting = sampler.tokens_by_source()
    result = train(cfg.pretrain, model_cfg, sampler, out, seed=run.seed, label=label,
                   tokenizer_sha256=data.tokenizer.sha256)
    accounting["lr_at_switch"] = lr_at(switch, sampler.total_steps, cfg.pretrain) if switch is not None else None
    accounting["arm"], accounting["seed"], accounting["branched_at"] = run.arm.name, run.seed, branch
    rank_zero_only(write_json)(run.rundir.tokens_by_source(run.arm.name, run.seed), accounting)
    marker.finish(outputs=files_in(result.checkpoint), tokens_per_s=result.tokens_per_s,
                  checkpoint=relative_to_run(result.checkpoint, run.run_dir), wall_s=result.wall_s, branched_at=branch)
    return StageOutput(result.checkpoint, marker.hash)


def posttrain_arm(cfg: StudyConfig, run: ArmRun, data: DataArtifacts, world: World, model_cfg: ModelConfig,
                  stage: str, init_from: StageOutput, benign_docs: list[str],
                  save_at: tuple[int, ...] = ()) -> StageOutput:
    """Instruction tuning (`stage="ift"`), benign finetuning (`"benign_ft"`) or harmful finetuning (`"harmful_ft"`)
    from `init_from`. The world supplies the train-side harmful requests (IFT's refusals), its natural-language
    benign requests with answers (the organism's; without them IFT uses generated instructions) and the attack set."""
    out = run.stage_dir(stage)
    scfg = getattr(cfg, stage)  # the stage's config section: cfg.ift, cfg.benign_ft or cfg.harmful_ft
    with_tags = cfg.saw_tags(run.arm)
    marker = SharedStepMarker(out, cfg.stage_hash(stage, extra=[init_from.config_hash, with_tags, list(save_at)]))
    if marker.is_done():
        return _finished(marker, run.run_dir)
    marker.start()
    ic = cfg.data.interventions
    if stage == IFT:
        examples = ift_examples(benign_docs, world.harmful_train_prompts, scfg.examples, scfg.refusal_fraction,
                                scfg.tag_fraction, with_tags, ic.tag, ic.tag_probability, cfg.data.seed,
                                benign_prompts=world.benign_train_prompts)
    elif stage == HARMFUL_FT:
        examples = harmful_ft_examples(scfg.data, world.harmful_ft_examples, scfg.examples, cfg.data.seed,
                                       scfg.benign_fraction, world.benign_train_prompts)
    else:
        examples = benign_ft_examples(scfg.data, world.benign_train_prompts, scfg.examples, cfg.data.seed)
    batches = ChatBatches(data.tokenizer, examples, scfg.batch_size, scfg.seq_len, scfg.steps, run.seed)
    result = train(scfg, model_cfg, batches, out, seed=run.seed, label=f"{stage} {run.label}",
                   init_from=init_from.checkpoint, save_at=save_at, tokenizer_sha256=data.tokenizer.sha256)
    kinds = {k: sum(1 for e in examples if e.kind == k) for k in sorted({e.kind for e in examples})}
    marker.finish(outputs=files_in(out / "ckpt"), tokens_per_s=result.tokens_per_s,
                  checkpoint=relative_to_run(result.checkpoint, run.run_dir), wall_s=result.wall_s, examples=kinds,
                  tokens=batches.tokens_seen())
    return StageOutput(result.checkpoint, marker.hash)


def curve_checkpoints(stage_out: StageOutput, steps: list[int], start: StageOutput) -> list[tuple[int, Path]]:
    """(step, checkpoint) of a finished finetuning at each curve step; step 0 is the model it started from."""
    ckpt_dir = stage_out.checkpoint.parent
    out = []
    for step in sorted(set(steps)):
        path = start.checkpoint if step == 0 else ckpt_dir / step_folder(step)
        if step and not (path / "state.json").is_file():
            raise FileNotFoundError(f"finetuning checkpoint {path} is missing; delete {ckpt_dir.parent} "
                                    "to rerun the stage")
        out.append((step, path))
    return out


def pretrain_checkpoints(cfg: StudyConfig, run: ArmRun, trunk: Path | None) -> list[tuple[int, Path]]:
    """(step, checkpoint) of every saved pretraining step of `run` before its last, with a full model file: for
    a branched arm, the trunk's steps before its branch point, then its own. The safety trajectory's points."""
    branch = branch_points(cfg).get(run.arm.name)
    need = ("model.safetensors", "state.json")
    found = {}
    if trunk is not None and branch is not None:
        found.update({s: p for s, p in iter_steps(trunk, need) if s < branch})
    found.update(iter_steps(run.stage_dir(PRETRAIN) / "ckpt", need))
    return [(s, p) for s, p in sorted(found.items()) if s < cfg.pretrain_steps]
