"""One training loop for every stage: pretraining, instruction tuning and benign finetuning.

A stage is configuration: a `TrainConfig`, a batch source whose `batch(step)` is a pure function of
the step, and optionally the weights to start from. The loop reads top to bottom:

    resume from the last checkpoint → for each step: lr, batch, forward/backward, clip, update, log
    → checkpoint every `ckpt_every` steps and at the end.

Checkpoints (checkpoint.py) are written atomically, so a killed run resumes from the last complete
checkpoint and replays the same batches.
One greppable line per step: `step 00042/00100 (42%) | loss ... | lr ... | interv=on | tok/s ... | eta ...`.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from safepretrain.checkpoint import (
    latest_checkpoint,
    load_training_state,
    load_weights_into,
    resolve_device,
    save_checkpoint,
)
from safepretrain.config import ModelConfig, TrainConfig
from safepretrain.model import Transformer
from safepretrain.utils import log, write_json


class BatchSource(Protocol):
    total_steps: int

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """(inputs (B,T), targets (B,T) with -100 where no loss, info for the log line)."""
        ...


@dataclass
class TrainResult:
    checkpoint: Path  # folder with model.safetensors of the final step
    steps: int
    final_loss: float
    tokens_per_s: float
    wall_s: float


def lr_at(step: int, total_steps: int, cfg: TrainConfig) -> float:
    """Learning rate for `step` (0-based): linear warmup, then cosine | WSD | constant."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    min_lr = cfg.lr * cfg.min_lr_ratio
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "cosine":
        progress = (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps)
        return min_lr + 0.5 * (1 + math.cos(math.pi * min(1.0, progress))) * (cfg.lr - min_lr)
    # wsd: warmup, stable at the peak, then linear decay over the last `decay_fraction` of the steps
    decay_start = total_steps - max(1, round(cfg.decay_fraction * total_steps))
    if step < decay_start:
        return cfg.lr
    return cfg.lr + (min_lr - cfg.lr) * (step - decay_start + 1) / (total_steps - decay_start)


def autocast(device: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


# --------------------------------------------------------------------------- the loop
def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices only (not norms), as in nanoGPT/Llama recipes."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=False)


def set_determinism(enabled: bool) -> None:
    """Deterministic kernels where PyTorch has them; a rerun of a seed then repeats its weights on one machine.

    The thread count is left as it is but must not change between runs: CPU reductions split work by thread."""
    torch.use_deterministic_algorithms(enabled, warn_only=True)
    if enabled and torch.backends.cudnn.is_available():
        torch.backends.cudnn.benchmark = False


def train(cfg: TrainConfig, model_cfg: ModelConfig, source: BatchSource, out_dir: Path, *, seed: int,
          label: str, init_from: Path | None = None, stop_at: int | None = None,
          save_at: tuple[int, ...] = ()) -> TrainResult:
    """Train `source.total_steps` steps into `out_dir` (ckpt/, metrics.jsonl); resume if possible.

    `stop_at` ends the run early (the LR schedule still spans `total_steps`) and `save_at` adds checkpoint
    steps: a trunk run uses both to leave a checkpoint at every step where an arm branches off it."""
    set_determinism(cfg.deterministic)
    device = resolve_device(cfg.device)
    total = source.total_steps
    end = total if stop_at is None else stop_at
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_dir = out_dir / "ckpt"
    torch.manual_seed(seed)
    model = Transformer(model_cfg)
    if init_from is not None:
        load_weights_into(model, init_from)
    model.to(device).train()
    opt = make_optimizer(model, cfg)

    start = 0
    resume = latest_checkpoint(ckpt_dir)
    if resume is not None:
        start = load_training_state(resume, model, opt, device)["step"]
        log.info(f"[{label}] resuming from {resume.name} (step {start}/{total})")
    metrics_path = out_dir / "metrics.jsonl"
    _truncate_metrics(metrics_path, start)
    step_fn = torch.compile(model) if cfg.compile else model

    loss_val, tokens_done, t_begin = float("nan"), 0, time.perf_counter()
    with open(metrics_path, "a") as metrics:
        for step in range(start, end):
            t0 = time.perf_counter()
            lr = lr_at(step, total, cfg)
            for group in opt.param_groups:
                group["lr"] = lr
            x, y, info = source.batch(step)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with autocast(device, cfg.precision):
                _, loss = step_fn(x, targets=y)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip or float("inf"))
            opt.step()
            opt.zero_grad(set_to_none=True)

            loss_val = loss.item()  # device sync; once per step is cheap next to the step itself
            dt = time.perf_counter() - t0
            tokens_done += x.numel()
            elapsed = time.perf_counter() - t_begin
            eta = elapsed / (step - start + 1) * (end - step - 1)
            interv = "on" if info.get("interventions") else "off"
            log.info(f"[{label}] step {step + 1:05d}/{total:05d} ({100 * (step + 1) / total:3.0f}%) | "
                     f"loss {loss_val:.4f} | lr {lr:.2e} | interv={interv} | phase {info.get('phase', '-')} | "
                     f"tok/s {x.numel() / dt:,.0f} | eta {eta:4.0f}s")
            metrics.write(json.dumps({"step": step + 1, "loss": loss_val, "lr": lr, "grad_norm": float(grad_norm),
                                      "interventions": bool(info.get("interventions")), "phase": info.get("phase"),
                                      "tokens": x.numel(), "dt": dt}) + "\n")
            metrics.flush()
            periodic = cfg.ckpt_every and (step + 1) % cfg.ckpt_every == 0
            if (periodic or step + 1 in save_at) and step + 1 < end:
                save_checkpoint(ckpt_dir, model, opt, {"step": step + 1, "label": label})

    final = latest_checkpoint(ckpt_dir)
    if final is None or json.loads((final / "state.json").read_text())["step"] != end:
        final = save_checkpoint(ckpt_dir, model, opt, {"step": end, "label": label, "loss": loss_val})
    wall = time.perf_counter() - t_begin  # includes checkpoints: they are part of the loop's cost
    result = TrainResult(final, end, loss_val, tokens_done / wall if wall > 0 else 0.0, wall)
    # the checkpoint relative to out_dir: a moved or copied run never points at another run's files
    write_json(out_dir / "train_result.json", {**result.__dict__,
                                               "checkpoint": os.path.relpath(result.checkpoint, out_dir)})
    return result


def _truncate_metrics(path: Path, upto_step: int) -> None:
    """Drop metric lines past the resume point, so a resumed run never logs a step twice."""
    if not path.exists():
        return
    keep = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= upto_step]
    path.write_text("".join(ln + "\n" for ln in keep))
