"""Time estimate of a study's training steps for `--dry-run`: model FLOPs over an assumed throughput.

Training FLOPs per token = 6N + 12·L·d·T (N parameters, L layers, d width, T sequence length: the matmuls of the
forward and backward passes and attention's score products: `model.flops_per_token`, the count the train
benchmark reports too).
Time = FLOPs / (GPUs × peak × MFU). The peak and MFU are assumptions, printed with every estimate: by default an
H100's dense bf16 peak (989 TFLOP/s) at 40% MFU for CUDA configs, and 0.08 TFLOP/s (this project's measured
2-core CPU rate, benchmarks/train_throughput.py) for CPU ones; set SAFEPRETRAIN_PEAK_TFLOPS and SAFEPRETRAIN_MFU
to your hardware's. Evaluation and the data stage are not estimated (they depend on the judge and generator).
"""

from __future__ import annotations

import os

import torch

from safepretrain.train.model import flops_per_token

GPU_PEAK_TFLOPS, GPU_MFU, CPU_TFLOPS = 989.0, 0.40, 0.08


def _rate(cfg, world: int) -> tuple[float, str]:
    """Achieved FLOP/s of `world` devices and the assumption behind it."""
    device = cfg.pretrain.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    gpu = device.startswith("cuda")
    peak = float(os.environ.get("SAFEPRETRAIN_PEAK_TFLOPS", GPU_PEAK_TFLOPS if gpu else CPU_TFLOPS))
    mfu = float(os.environ.get("SAFEPRETRAIN_MFU", GPU_MFU if gpu else 1.0))
    return world * peak * mfu * 1e12, f"{world} x {peak:g} TFLOP/s x {mfu:.0%} MFU (assumed)"


def _fmt(seconds: float) -> str:
    return f"{seconds / 3600:,.1f} h" if seconds >= 3600 else f"{seconds / 60:,.1f} min" if seconds >= 60 \
        else f"{seconds:,.1f} s"


def time_plan(cfg, world_size: int = 1) -> list[str]:
    """`--dry-run` lines: the estimated time of each training step of one (arm, seed) and of the whole study."""
    world = world_size if cfg.pretrain.distributed != "none" else 1
    rate, assumed = _rate(cfg, world)
    per_stage = {}
    for stage, scfg in cfg.train_sections.items():
        steps = cfg.pretrain_steps if scfg is cfg.pretrain else scfg.steps
        tokens = steps * scfg.batch_size * scfg.seq_len
        per_stage[stage] = tokens * flops_per_token(cfg.model, scfg.seq_len, cfg.tokenizer.vocab_size) / rate
    runs = len(cfg.seeds) * len(cfg.curriculum.arms)
    return [f"time per arm and seed at {assumed}: " + ", ".join(f"{s} ~{_fmt(t)}" for s, t in per_stage.items())
            + f"; training of all {runs} arm x seed runs ~{_fmt(runs * sum(per_stage.values()))} (a shared "
            "safe-only trunk saves part of it; evaluation and data stage not included)"]
