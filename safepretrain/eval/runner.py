"""Evaluate checkpoints: every registered task, once per decoder where it decodes.

Writes `eval/<arm>/seed<k>/<stage>/<decoder>/<task>/` with `results.json` (aggregate rows with CIs),
`samples.jsonl` (what the model said, with the judge's verdict and reason) and `items.jsonl` (per-item
values that the report pairs across arms by seed and item). `decoder` is `topk`, `beam`, `safebeam`, or
`none` for tasks that do not decode. Generative tasks run only for `eval.generation_seeds`.

Once per study, beside the models: the judge (fit on the world, `judge/`) with its measured quality, and
the text-only probe baselines (`eval/baselines/`), which need no model. A finetuning curve
(`eval/<arm>/seed<k>/<benign_ft|harmful_ft>_curve/step_XXXXXX/<decoder>/<task>/`) holds ASR (top-k, generation
seeds) and the judge-free tasks at each curve step. A finished evaluation is skipped when its inputs are unchanged.
"""

from __future__ import annotations

import time
from pathlib import Path

from safepretrain.config import ModelConfig, StudyConfig
from safepretrain.data.pipeline import DataArtifacts
from safepretrain.eval.context import EvalContext, TaskResult
from safepretrain.eval.judges import build_judges
from safepretrain.eval.judges.agreement import human_agreement
from safepretrain.eval.probes import text_baselines
from safepretrain.eval.prompts import EvalPrompts
from safepretrain.eval.tasks import TASKS, probe_set, study_tasks
from safepretrain.rundir import (
    BASE,
    CURVES,
    NO_DECODER,
    TRAJECTORY,
    ArmRun,
    RunDir,
    StageOutput,
    relative_to_run,
    step_folder,
)
from safepretrain.train.checkpoint import load_model, resolve_device
from safepretrain.utils import StepMarker, files_in, log, write_json, write_jsonl
from safepretrain.world import World

# measured at every finetuning curve step: ASR under the cheap decoder, and the judge-free metrics
CURVE_TASKS = (("asr", "topk"), ("likelihood", NO_DECODER), ("heldout_loss", NO_DECODER))
# the safety trajectory's metrics
TRAJECTORY_TASKS = (("asr", "topk"), ("likelihood", NO_DECODER), ("probe", NO_DECODER))


class Evaluator:
    """Evaluates a study's checkpoints. `active=False` (the ranks of a multi-rank study other than rank 0): every
    method returns at once, so the study calls the same methods on every rank."""

    def __init__(self, cfg: StudyConfig, world: World, data: DataArtifacts, prompts: EvalPrompts,
                 model_cfg: ModelConfig, active: bool = True):
        self.cfg, self.data, self.prompts, self.model_cfg = cfg, data, prompts, model_cfg
        self.active = active
        if not active:
            return
        self.rundir = RunDir(cfg.run_dir)
        self.judges = build_judges(cfg, world, self.rundir)
        self.judge = next(iter(self.judges.values()))  # primary: its verdicts feed the paired statistics
        self._judge_agreement(world)
        self.generation_seeds = set(cfg.eval.generation_seeds or cfg.seeds)
        self._text_baselines()

    def _judge_agreement(self, world: World) -> None:
        """Each judge against the world's human labels (accuracy, Cohen's κ): `judge/agreement/agreement.json`."""
        out = self.rundir.judge_agreement
        marker = StepMarker(out, self.cfg.stage_hash("world", extra=[self.cfg.eval.judges, self.cfg.data.seed,
                                                                      self.cfg.eval.judge.model_dump()]))
        if marker.is_done():
            return
        marker.start()
        found = human_agreement(self.judges, world, seed=self.cfg.data.seed)
        write_json(self.rundir.human_agreement_file, found)
        log.info("judges vs human labels: " + "; ".join(
            f"{name} {s} κ={m['kappa']:.2f}" for name, sets in found.items() for s, m in sets.items()))
        marker.finish(outputs=files_in(out))

    def _text_baselines(self) -> None:
        """Probe baselines that read only the prompt text (TF-IDF, MiniLM, surface features): a probe on a
        model means something only where it beats them."""
        out = self.rundir.baselines
        marker = StepMarker(out, self.cfg.stage_hash("eval", "data"))
        if marker.is_done():
            return
        marker.start()
        ctx = EvalContext(None, self.data.tokenizer, None, self.cfg.eval, 0, self.prompts, self.data.shards["val"])
        texts, labels, groups = probe_set(ctx)
        p = self.cfg.eval.probe
        found = text_baselines(texts, labels, groups, folds=p.folds, C=p.C, n_boot=self.cfg.eval.bootstrap, seed=0)
        rows = [{"metric": f"baseline_{k}", "value": v, "ci_low": lo, "ci_high": hi, "n": len(texts)}
                for k, (v, lo, hi) in found.items()]
        write_json(self.rundir.probe_baselines_file,
                   {"task": "probe_baselines", "negatives": p.negatives, "rows": rows})
        log.info("probe baselines (text only): " + ", ".join(f"{r['metric']}={r['value']:.3f}" for r in rows))
        marker.finish(outputs=files_in(out))

    def _context(self, checkpoint: Path, seed: int, reference: Path | None = None) -> EvalContext:
        device = resolve_device(self.cfg.eval.device)
        tok_sha = self.data.tokenizer.sha256  # a checkpoint trained with another tokenizer is refused
        model = load_model(self.model_cfg, checkpoint, device, tokenizer_sha256=tok_sha)
        return EvalContext(model, self.data.tokenizer, self.judge, self.cfg.eval, seed, self.prompts,
                           self.data.shards["val"], judges=self.judges,
                           reference=None if reference is None else load_model(self.model_cfg, reference, device,
                                                                                tokenizer_sha256=tok_sha))

    def _write(self, folder: Path, run: ArmRun, stage: str, decoder: str, task, result: TaskResult,
               checkpoint: Path, seconds: float, **extra) -> None:
        write_json(folder / "results.json", {
            "arm": run.arm.name, "seed": run.seed, "stage": stage, "decoder": decoder, "task": task.name,
            "task_version": task.version, "higher_is_better": task.higher_is_better, "rows": result.rows,
            "judge": self.judge.name if task.generative else None,
            "checkpoint": relative_to_run(checkpoint, run.run_dir), "seconds": seconds, **extra})
        if result.samples:
            write_jsonl(folder / "samples.jsonl", result.samples)
        if result.items:
            write_jsonl(folder / "items.jsonl", result.items)

    def evaluate(self, run: ArmRun, stage: str, trained: StageOutput, reference: StageOutput | None = None) -> None:
        """Every task on `trained` (a checkpoint + the hash of everything that made it) at `stage`; `reference` is
        the model it was trained from, for the tasks that compare the two (eval/depth.py, at the IFT stage)."""
        if not self.active:
            return
        out = run.eval_dir(stage)
        generative = run.seed in self.generation_seeds
        extra = [trained.config_hash, generative, reference.config_hash if reference else None]
        marker = StepMarker(out, self.cfg.stage_hash("eval", extra=extra))
        if marker.is_done():
            return
        marker.start()
        t0 = time.perf_counter()
        tasks = [t for t in study_tasks(self.cfg.eval) if stage in getattr(t, "stages", (stage,))
                 and (generative or not t.generative)]
        ctx = self._context(trained.checkpoint, run.seed, reference.checkpoint if reference else None)
        summary = []
        for task in tasks:
            attack = getattr(task, "attack", None) is not None
            for decoder in (self.cfg.eval.decoders_for(attack) if task.uses_decoder else [NO_DECODER]):
                t1 = time.perf_counter()
                result = task.run(ctx, stage, decoder)
                self._write(out / decoder / task.name, run, stage, decoder, task, result, trained.checkpoint,
                            time.perf_counter() - t1)
                first = result.rows[0] if result.rows else None  # no rows: nothing to measure here (eval/depth.py)
                head = next((r for r in result.rows if r["metric"] == "auroc_best"), first)
                if head is not None:
                    summary.append(f"{task.name}/{decoder} {head['metric']}={head['value']:.3f}")
        log.info(f"[eval {run.label} {stage}] " + " | ".join(summary) + f" ({time.perf_counter() - t0:.0f}s)")
        marker.finish(outputs=files_in(out), checkpoint=relative_to_run(trained.checkpoint, run.run_dir),
                      generative=generative)

    def evaluate_curve(self, run: ArmRun, stage: str, checkpoints: list[tuple[int, Path]],
                       trained: StageOutput) -> None:
        """ASR (top-k, generation seeds) and the judge-free tasks at each step of the finetuning `stage` in
        `checkpoints` ((step, checkpoint) pairs): the benign-finetuning curve and the harmful-finetuning tamper
        curve. Step 0, the IFT model the finetuning started from, is not evaluated again: the report reads its
        IFT evaluation as the curve's first point (report/data.py: `collect_records`)."""
        if not self.active:
            return
        curve = CURVES[stage]
        out = run.eval_dir(curve)
        generative = run.seed in self.generation_seeds
        checkpoints = [(s, c) for s, c in checkpoints if s > 0]
        steps = [s for s, _ in checkpoints]
        marker = StepMarker(out, self.cfg.stage_hash("eval", extra=[trained.config_hash, steps, generative]))
        if marker.is_done():
            return
        marker.start()
        for step, checkpoint in checkpoints:
            ctx = self._context(checkpoint, run.seed)
            for name, decoder in CURVE_TASKS:
                task, t1 = TASKS[name], time.perf_counter()
                if task.generative and not generative:
                    continue
                result = task.run(ctx, stage, decoder)
                self._write(out / step_folder(step) / decoder / name, run, curve, decoder, task, result,
                            checkpoint, time.perf_counter() - t1, ft_step=step)
        marker.finish(outputs=files_in(out), steps=steps)

    def evaluate_trajectory(self, run: ArmRun, checkpoints: list[tuple[int, Path]], trained: StageOutput) -> None:
        """The safety trajectory: ASR (top-k, generation seeds), the likelihood metrics and the probes at every
        saved pretraining step in `checkpoints` (the final step is the `base` evaluation)."""
        if not self.active:
            return
        out = run.eval_dir(TRAJECTORY)
        steps = [s for s, _ in checkpoints]
        marker = StepMarker(out, self.cfg.stage_hash("eval", extra=[trained.config_hash, steps]))
        if marker.is_done():
            return
        marker.start()
        tokens_per_step = self.cfg.tokens_per_step
        generative = run.seed in self.generation_seeds
        for step, checkpoint in checkpoints:
            ctx = self._context(checkpoint, run.seed)
            for name, decoder in TRAJECTORY_TASKS:
                task, t1 = TASKS[name], time.perf_counter()
                if task.generative and not generative:
                    continue
                result = task.run(ctx, BASE, decoder)
                self._write(out / step_folder(step) / decoder / name, run, BASE, decoder, task, result, checkpoint,
                            time.perf_counter() - t1, pretrain_step=step, tokens=step * tokens_per_step)
        marker.finish(outputs=files_in(out), steps=steps)
