"""One training loop for every stage: pretraining, instruction tuning and benign finetuning.

A stage is configuration: a `TrainConfig`, a batch source whose `batch(step)` is a pure function of
the step, and optionally the weights to start from. The loop reads top to bottom:

    resume from the last checkpoint → for each step: lr, batch, forward/backward, clip, update, log
    → checkpoint every `ckpt_every` steps and at the end.

Checkpoints (checkpoint.py) are written atomically, so a killed run resumes from the last complete
checkpoint and replays the same batches.
One greppable line per step: `step 00042/00100 (42%) | loss ... | lr ... | interv=on | tok/s ... | eta ...`.

Scale-out (distributed.py) changes the step, not the loop: `grad_accum_steps` micro-batches and, under
torchrun, `distributed: ddp | fsdp2` ranks each take a slice of the same global batch, weighted so the update
equals the one-process step; those runs (and `checkpoint_format: dcp`) checkpoint with torch.distributed.checkpoint.
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

from safepretrain.config import ModelConfig, TrainConfig
from safepretrain.train import distributed as dp
from safepretrain.train.checkpoint import (
    checkpoints_newest_first,
    is_dcp_checkpoint,
    latest_checkpoint,
    load_dcp_state,
    load_training_state,
    load_weights_into,
    prune_checkpoints,
    resolve_device,
    save_checkpoint,
    save_dcp_checkpoint,
)
from safepretrain.train.model import Transformer
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
          save_at: tuple[int, ...] = (), tokenizer_sha256: str | None = None) -> TrainResult:
    """Train `source.total_steps` steps into `out_dir` (ckpt/, metrics.jsonl); resume if possible.

    `stop_at` ends the run early (the LR schedule still spans `total_steps`) and `save_at` adds checkpoint
    steps: a trunk run uses both to leave a checkpoint at every step where an arm branches off it.
    Every checkpoint records `model_cfg` and `tokenizer_sha256` (the data's tokenizer), which loaders check.
    Under torchrun with `cfg.distributed` set, every rank calls this; rank 0 alone logs and writes metrics."""
    set_determinism(cfg.deterministic)
    device = resolve_device(cfg.device) if cfg.distributed == "none" else dp.rank_device(cfg.device)
    ctx = dp.setup(cfg.distributed, device)
    try:
        return _train(cfg, model_cfg, source, out_dir, seed=seed, label=label, init_from=init_from,
                      stop_at=stop_at, save_at=save_at, device=device, ctx=ctx, tokenizer_sha256=tokenizer_sha256)
    finally:
        dp.teardown(ctx)


def _train(cfg: TrainConfig, model_cfg: ModelConfig, source: BatchSource, out_dir: Path, *, seed: int,
           label: str, init_from: Path | None, stop_at: int | None, save_at: tuple[int, ...],
           device: torch.device, ctx: dp.DistContext, tokenizer_sha256: str | None = None) -> TrainResult:
    total = source.total_steps
    end = total if stop_at is None else stop_at
    accum = cfg.grad_accum_steps
    if cfg.batch_size % (ctx.world * accum):
        raise ValueError(f"batch_size={cfg.batch_size} must be divisible by world size {ctx.world} x "
                         f"grad_accum_steps={accum}: every rank needs equal micro-batches")
    one_shot = not ctx.active and accum == 1  # today's single-process step, kept bit-identical
    use_dcp = ctx.active or cfg.checkpoint_format == "dcp"
    say = log.info if ctx.is_main else (lambda msg: None)
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_dir = out_dir / "ckpt"
    torch.manual_seed(seed)  # the same initial weights on every rank
    model = Transformer(model_cfg)
    if init_from is not None:
        load_weights_into(model, init_from)
    model.activation_checkpointing = cfg.activation_checkpointing
    model.to(device).train()
    model = dp.wrap(model, ctx, device)  # before the optimizer: FSDP2 replaces parameters by sharded ones
    opt = make_optimizer(model, cfg)

    start = 0
    if use_dcp:
        start, resume = _resume_dcp(ckpt_dir, model, opt, label, ctx)
    else:
        resume = latest_checkpoint(ckpt_dir)
        if resume is not None:
            start = load_training_state(resume, model, opt, device)["step"]
    if resume is not None:
        say(f"[{label}] resuming from {resume.name} (step {start}/{total})")
    metrics_path = out_dir / "metrics.jsonl"
    if ctx.is_main:
        _truncate_metrics(metrics_path, start)
    step_fn = torch.compile(model) if cfg.compile else model

    def save(step: int, final: bool = False, **extra) -> Path:
        state = {"step": step, "label": label, **extra}
        if use_dcp:
            # the final checkpoint and the `save_at` ones (branch points, benign-FT curve) are read by eval,
            # export and post-training, which load a full model.safetensors
            path = save_dcp_checkpoint(ckpt_dir, model, opt, state, consolidate=final or step in save_at,
                                       tokenizer_sha256=tokenizer_sha256)
        else:
            path = save_checkpoint(ckpt_dir, model, opt, state, tokenizer_sha256=tokenizer_sha256)
        if cfg.keep_checkpoints and ctx.is_main:
            prune_checkpoints(ckpt_dir, cfg.keep_checkpoints, protect=tuple(save_at))
        return path

    loss_val, tokens_done, t_begin = float("nan"), 0, time.perf_counter()
    with open(metrics_path if ctx.is_main else os.devnull, "a") as metrics:
        for step in range(start, end):
            t0 = time.perf_counter()
            lr = lr_at(step, total, cfg)
            for group in opt.param_groups:
                group["lr"] = lr
            x, y, info = source.batch(step)
            if one_shot:
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                with autocast(device, cfg.precision):
                    _, loss = step_fn(x, targets=y)
                loss.backward()
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip or float("inf"))
            else:
                loss = forward_backward(step_fn, model, x, y, ctx, accum, device, cfg.precision)
                grad_norm = dp.clip_grad_norm(model, cfg.grad_clip or float("inf"), ctx)
            opt.step()
            opt.zero_grad(set_to_none=True)

            loss_val = loss.item()  # device sync; once per step is cheap next to the step itself
            dt = time.perf_counter() - t0
            tokens_done += x.numel()
            elapsed = time.perf_counter() - t_begin
            eta = elapsed / (step - start + 1) * (end - step - 1)
            interv = "on" if info.get("interventions") else "off"
            say(f"[{label}] step {step + 1:05d}/{total:05d} ({100 * (step + 1) / total:3.0f}%) | "
                f"loss {loss_val:.4f} | lr {lr:.2e} | interv={interv} | phase {info.get('phase', '-')} | "
                f"tok/s {x.numel() / dt:,.0f} | eta {eta:4.0f}s")
            metrics.write(json.dumps({"step": step + 1, "loss": loss_val, "lr": lr, "grad_norm": float(grad_norm),
                                      "interventions": bool(info.get("interventions")), "phase": info.get("phase"),
                                      "tokens": x.numel(), "dt": dt}) + "\n")
            metrics.flush()
            periodic = cfg.ckpt_every and (step + 1) % cfg.ckpt_every == 0
            if (periodic or step + 1 in save_at) and step + 1 < end:
                save(step + 1)

    final = latest_checkpoint(ckpt_dir)
    if final is None or json.loads((final / "state.json").read_text())["step"] != end:
        final = save(end, final=True, loss=loss_val)
    dp.barrier(ctx)  # no rank reads the final checkpoint before rank 0 has renamed it into place
    wall = time.perf_counter() - t_begin  # includes checkpoints: they are part of the loop's cost
    result = TrainResult(final, end, loss_val, tokens_done / wall if wall > 0 else 0.0, wall)
    # the checkpoint relative to out_dir: a moved or copied run never points at another run's files
    if ctx.is_main:
        write_json(out_dir / "train_result.json", {**result.__dict__,
                                                   "checkpoint": os.path.relpath(result.checkpoint, out_dir)})
    return result


def forward_backward(step_fn, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: dp.DistContext,
                     accum: int, device: torch.device, precision: str) -> torch.Tensor:
    """Backward of the global batch's mean loss, over this rank's rows in `accum` micro-batches; returns
    that mean loss (summed over ranks) for the log.

    A micro-batch's mean loss is weighted by its share of the global batch's target tokens, so the gradient
    sums to that of one backward over the whole batch; DDP/FSDP2 average over ranks, hence x world. The
    all-ones loss_mask makes a micro-batch with no targets (a prompt-only row in post-training) count 0,
    where a plain mean would be 0/0 = NaN."""
    n_total = (y != -100).sum().clamp(min=1)
    xs, ys = dp.rank_rows(x, ctx).chunk(accum), dp.rank_rows(y, ctx).chunk(accum)
    loss_sum = torch.zeros((), device=device)
    for i, (xm, ym) in enumerate(zip(xs, ys)):
        xm, ym = xm.to(device, non_blocking=True), ym.to(device, non_blocking=True)
        weight = ((ym != -100).sum() / n_total.to(device)).float()
        with dp.grad_sync(model, ctx, last=i == accum - 1):
            with autocast(device, precision):
                _, loss = step_fn(xm, targets=ym, loss_mask=torch.ones_like(ym, dtype=torch.bool))
            (loss * (weight * ctx.world)).backward()
        loss_sum += loss.detach() * weight
    return dp.all_reduce_sum(loss_sum, ctx)


def _resume_dcp(ckpt_dir: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, label: str,
                ctx: dp.DistContext) -> tuple[int, Path | None]:
    """Load the newest readable checkpoint (DCP, or a safetensors one when the model is not sharded);
    a corrupt or partial one is reported with its path and the previous one is tried."""
    candidates = checkpoints_newest_first(ckpt_dir)
    for path in candidates:
        try:
            if is_dcp_checkpoint(path):
                return load_dcp_state(path, model, opt)["step"], path
            if not ctx.active:
                return load_training_state(path, model, opt, model.device)["step"], path
            raise ValueError("a safetensors checkpoint cannot be loaded into a DDP/FSDP2 model; "
                             "resume it in one process with checkpoint_format: dcp first")
        except Exception as e:  # noqa: BLE001 - any unreadable checkpoint: fall back to the previous one
            log.warning(f"[{label}] checkpoint {path} is unreadable ({type(e).__name__}: {e}); "
                        f"trying the previous one")
    if candidates:
        raise RuntimeError(f"no readable checkpoint in {ckpt_dir} (tried {[p.name for p in candidates]}); "
                           "move them aside to start from scratch")
    return 0, None


def _truncate_metrics(path: Path, upto_step: int) -> None:
    """Drop metric lines past the resume point, so a resumed run never logs a step twice."""
    if not path.exists():
        return
    keep = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= upto_step]
    path.write_text("".join(ln + "\n" for ln in keep))
