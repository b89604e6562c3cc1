"""Evaluate checkpoints: every registered task, once per decoder where it decodes.

Writes `eval/<arm>/seed<k>/<stage>/<decoder>/<task>/` with `results.json` (aggregate rows with CIs),
`samples.jsonl` (what the model said, with the judge's verdict and reason) and `items.jsonl` (per-item
values that the report pairs across arms by seed and item). `decoder` is `topk`, `beam`, `safebeam`, or
`none` for tasks that do not decode. Generative tasks run only for `eval.generation_seeds`.

Once per study, beside the models: the judge (fit on the world, `judge/`) with its measured quality, and
the text-only probe baselines (`eval/baselines/`), which need no model. The benign-finetuning curve
(`eval/<arm>/seed<k>/benign_ft_curve/step_XXXXXX/none/<task>/`) holds the judge-free tasks at each
curve step. A finished evaluation is skipped when its inputs are unchanged.
"""

from __future__ import annotations

import time
from pathlib import Path

from safepretrain.config import ModelConfig, StudyConfig
from safepretrain.data.pipeline import DataArtifacts
from safepretrain.eval.prompts import EvalPrompts
from safepretrain.eval.tasks import TASKS, EvalContext, TaskResult, probe_set, study_tasks
from safepretrain.run.rundir import ArmRun, StageOutput, relative_to_run
from safepretrain.train.checkpoint import load_model, resolve_device
from safepretrain.utils import StepMarker, files_in, log, read_json, write_json, write_jsonl
from safepretrain.world import World

CURVE_TASKS = ("likelihood", "heldout_loss")  # judge-free, cheap: measured at every benign-FT curve step
TRAJECTORY_TASKS = (("asr", "topk"), ("likelihood", "none"), ("probe", "none"))  # the safety trajectory's metrics


def load_or_fit_judge(cfg: StudyConfig, world: World, folder: Path):
    """The study's judge: its response-harm classifier is fit once per run directory on the world's
    response-like text, and the judge's quality on labelled responses is measured and saved beside it."""
    from safepretrain.eval.judges.classifier import Judge, ResponseHarmClassifier, judge_quality

    j = cfg.eval.judge
    marker = StepMarker(folder, cfg.stage_hash("world", extra=[j.model_dump(), cfg.data.seed]))
    if not marker.is_done():
        marker.start()
    if world.organism is not None:  # ground truth: the exact judge, nothing to fit
        from safepretrain.eval.judges.exact import ExactJudge, exact_judge_quality

        judge = ExactJudge(world, j.min_keys, cfg.data.interventions.tag, j.opening_words)
        if not marker.is_done():
            quality = exact_judge_quality(judge, world, seed=cfg.data.seed)
            write_json(folder / "quality.json", quality)
            log.info(f"judge: exact (>= {j.min_keys} of 4 keys); accuracy on generated cases "
                     f"{quality['cases']['accuracy']:.2f} (n={quality['cases']['n']})")
            marker.finish(outputs=files_in(folder))
        return judge
    harm = ResponseHarmClassifier.load_or_fit(folder / "classifier", world, seed=cfg.data.seed)
    judge = Judge(harm, j, cfg.data.interventions.tag, harm_probability=j.harm_probability,
                  opening_words=j.opening_words, echo_ngram=j.echo_ngram, comply_min_words=j.comply_min_words)
    if not marker.is_done():
        quality = judge_quality(judge, world, seed=cfg.data.seed)
        write_json(folder / "quality.json", quality)
        c = quality["cases"]
        log.info(f"judge: refusal P/R on human labels {quality['human_refusal']['precision']:.2f}/"
                 f"{quality['human_refusal']['recall']:.2f}; tricky cases accuracy {c['accuracy']:.2f} (n={c['n']})")
        marker.finish(outputs=files_in(folder))
    return judge


class Evaluator:
    def __init__(self, cfg: StudyConfig, world: World, data: DataArtifacts, prompts: EvalPrompts,
                 model_cfg: ModelConfig):
        self.cfg, self.data, self.prompts, self.model_cfg = cfg, data, prompts, model_cfg
        self.run_dir = data.folder.parent
        from safepretrain.eval.judges import build_judges

        self.judges = build_judges(cfg, world, self.run_dir)
        self.judge = next(iter(self.judges.values()))  # primary: its verdicts feed the paired statistics
        self._judge_agreement(world)
        self.generation_seeds = set(cfg.eval.generation_seeds or cfg.seeds)
        self._text_baselines()

    def _judge_agreement(self, world: World) -> None:
        """Each judge against the world's human labels (accuracy, Cohen's κ): `judge/agreement.json`."""
        from safepretrain.eval.judges.agreement import human_agreement

        out = self.run_dir / "judge" / "agreement"
        marker = StepMarker(out, self.cfg.stage_hash("world", extra=[self.cfg.eval.judges, self.cfg.data.seed,
                                                                      self.cfg.eval.judge.model_dump()]))
        if marker.is_done():
            return
        marker.start()
        found = human_agreement(self.judges, world, seed=self.cfg.data.seed)
        write_json(out / "agreement.json", found)
        log.info("judges vs human labels: " + "; ".join(
            f"{name} {s} κ={m['kappa']:.2f}" for name, sets in found.items() for s, m in sets.items()))
        marker.finish(outputs=files_in(out))

    def _text_baselines(self) -> None:
        """Probe baselines that read only the prompt text (TF-IDF, MiniLM, surface features): a probe on a
        model means something only where it beats them."""
        from safepretrain.eval.probes import text_baselines

        out = self.run_dir / "eval" / "baselines"
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
        write_json(out / "results.json", {"task": "probe_baselines", "negatives": p.negatives, "rows": rows})
        log.info("probe baselines (text only): " + ", ".join(f"{r['metric']}={r['value']:.3f}" for r in rows))
        marker.finish(outputs=files_in(out))

    def _context(self, checkpoint: Path, seed: int) -> EvalContext:
        model = load_model(self.model_cfg, checkpoint, resolve_device(self.cfg.pretrain.device))
        return EvalContext(model, self.data.tokenizer, self.judge, self.cfg.eval, seed, self.prompts,
                           self.data.shards["val"], judges=self.judges)

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

    def evaluate(self, run: ArmRun, stage: str, trained: StageOutput) -> None:
        """Every task on `trained` (a checkpoint + the hash of everything that made it) at `stage`."""
        out = run.eval_dir(stage)
        generative = run.seed in self.generation_seeds
        marker = StepMarker(out, self.cfg.stage_hash("eval", extra=[trained.config_hash, generative]))
        if marker.is_done():
            return
        marker.start()
        t0 = time.perf_counter()
        ctx = self._context(trained.checkpoint, run.seed)
        summary = []
        for task in study_tasks(self.cfg.eval):
            if task.generative and not generative:
                continue
            for decoder in (self.cfg.eval.decoders if task.uses_decoder else ["none"]):
                t1 = time.perf_counter()
                result = task.run(ctx, stage, decoder)
                self._write(out / decoder / task.name, run, stage, decoder, task, result, trained.checkpoint,
                            time.perf_counter() - t1)
                head = next((r for r in result.rows if r["metric"] == "auroc_best"), result.rows[0])
                summary.append(f"{task.name}/{decoder} {head['metric']}={head['value']:.3f}")
        log.info(f"[eval {run.label} {stage}] " + " | ".join(summary) + f" ({time.perf_counter() - t0:.0f}s)")
        marker.finish(outputs=files_in(out), checkpoint=relative_to_run(trained.checkpoint, run.run_dir),
                      generative=generative)

    def evaluate_curve(self, run: ArmRun, checkpoints: list[tuple[int, Path]], trained: StageOutput) -> None:
        """The judge-free tasks at each benign-finetuning step in `checkpoints` ((step, checkpoint) pairs)."""
        out = run.eval_dir("benign_ft_curve")
        marker = StepMarker(out, self.cfg.stage_hash("eval", extra=[trained.config_hash, [s for s, _ in checkpoints]]))
        if marker.is_done():
            return
        marker.start()
        for step, checkpoint in checkpoints:
            ctx = self._context(checkpoint, run.seed)
            for name in CURVE_TASKS:
                task, t1 = TASKS[name], time.perf_counter()
                result = task.run(ctx, "benign_ft", "none")
                self._write(out / f"step_{step:06d}" / "none" / name, run, "benign_ft_curve", "none", task, result,
                            checkpoint, time.perf_counter() - t1, ft_step=step)
        marker.finish(outputs=files_in(out), steps=[s for s, _ in checkpoints])


    def evaluate_trajectory(self, run: ArmRun, checkpoints: list[tuple[int, Path]], trained: StageOutput) -> None:
        """The safety trajectory: ASR (top-k, generation seeds), the likelihood metrics and the probes at every
        saved pretraining step in `checkpoints` (the final step is the `base` evaluation)."""
        out = run.eval_dir("pretrain_trajectory")
        steps = [s for s, _ in checkpoints]
        marker = StepMarker(out, self.cfg.stage_hash("eval", extra=[trained.config_hash, steps]))
        if marker.is_done():
            return
        marker.start()
        tokens_per_step = self.cfg.pretrain.batch_size * self.cfg.pretrain.seq_len
        generative = run.seed in self.generation_seeds
        for step, checkpoint in checkpoints:
            ctx = self._context(checkpoint, run.seed)
            for name, decoder in TRAJECTORY_TASKS:
                task, t1 = TASKS[name], time.perf_counter()
                if task.generative and not generative:
                    continue
                result = task.run(ctx, "base", decoder)
                self._write(out / f"step_{step:06d}" / decoder / name, run, "base", decoder, task, result, checkpoint,
                            time.perf_counter() - t1, pretrain_step=step, tokens=step * tokens_per_step)
        marker.finish(outputs=files_in(out), steps=steps)


def judge_quality_of(run_dir: Path) -> dict | None:
    path = run_dir / "judge" / "quality.json"
    return read_json(path) if path.is_file() else None
