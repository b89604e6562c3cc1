"""Evaluate one checkpoint at one stage: every registered task, once per decoder where it decodes.

Writes `eval/<arm>/seed<k>/<stage>/<decoder>/<task>/results.json` (+ `samples.jsonl`), where decoder is
`topk`, `safebeam`, or `none` for tasks that do not decode. A finished (arm, seed, stage) is skipped when
its inputs are unchanged.
"""

from __future__ import annotations

import time
import torch

from safepretrain.config import ModelConfig, StudyConfig
from safepretrain.data.pipeline import DataArtifacts
from safepretrain.data.scoring import EmbeddingScorer
from safepretrain.eval.judges import Judge
from safepretrain.eval.tasks import TASKS, EvalContext
from safepretrain.rundir import relative_to_run
from safepretrain.train import load_model, resolve_device
from safepretrain.utils import StepMarker, log, write_json, write_jsonl


class Evaluator:
    def __init__(self, cfg: StudyConfig, data: DataArtifacts, harmful: list[dict], benign_edgy: list[dict],
                 benign: list[str]):
        self.cfg, self.data = cfg, data
        self.harmful, self.benign_edgy, self.benign = harmful, benign_edgy, benign
        scorer = EmbeddingScorer.load(data.folder / "scorer")
        self.judge = Judge(scorer, cfg.eval.judge, cfg.data.interventions.tag, cfg.data.scorer.chunk_words)

    def evaluate(self, run, stage: str, model_cfg: ModelConfig, trained) -> None:
        """Evaluate `trained` (a study.StageOutput: checkpoint + the hash of everything that made it)."""
        out = run.eval_dir(stage)
        checkpoint = trained.checkpoint
        stored_ckpt = relative_to_run(checkpoint, run.run_dir)
        marker = StepMarker(out, self.cfg.stage_hash("eval", extra=trained.config_hash))
        if marker.is_done():
            return
        marker.start()
        t0 = time.perf_counter()
        model = load_model(model_cfg, checkpoint, resolve_device(self.cfg.pretrain.device))
        ctx = EvalContext(model, self.data.tokenizer, self.judge, self.cfg.eval, run.seed, self.harmful,
                          self.benign_edgy, self.benign, self.data.shards["val"])
        summary = []
        for task in TASKS.values():
            for decoder in (self.cfg.eval.decoders if task.uses_decoder else ["none"]):
                t1 = time.perf_counter()
                with torch.inference_mode():
                    rows, samples = task.run(ctx, stage, decoder)
                folder = out / decoder / task.name
                write_json(folder / "results.json", {
                    "arm": run.arm.name, "seed": run.seed, "stage": stage, "decoder": decoder, "task": task.name,
                    "task_version": task.version, "higher_is_better": task.higher_is_better, "rows": rows,
                    "checkpoint": stored_ckpt, "seconds": time.perf_counter() - t1})
                if samples:
                    write_jsonl(folder / "samples.jsonl", samples)
                headline = rows[-1] if task.name == "probe" else rows[0]
                summary.append(f"{task.name}/{decoder} {headline['metric']}={headline['value']:.3f}")
        log.info(f"[eval {run.arm.name} s{run.seed} {stage}] " + " | ".join(summary)
                 + f" ({time.perf_counter() - t0:.0f}s)")
        marker.finish(checkpoint=stored_ckpt)
