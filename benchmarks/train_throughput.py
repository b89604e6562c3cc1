"""Training throughput of our loop vs a bare loop on the same model and the same batches.

Ours = `safepretrain.train.loop.train` with the curriculum sampler, one log line and one metrics.jsonl
record per step, the LR schedule, grad clipping and a final checkpoint. Bare = the same model,
optimizer and precomputed batches in a minimal `for` loop (no clipping, no logging, no checkpoint).
Both run in this process, interleaved (the order alternates between repeats), and each gets the median
of its repeats: these machines are noisy (±10% run to run), so only the ratio within one run means much.

    python benchmarks/train_throughput.py [--steps 60] [--repeats 3] [--preset tiny] [--precision fp32] [--compile]
                                          [--peak-tflops P]   (adds MFU = achieved model TFLOP/s / P)

Writes benchmarks/results/train_throughput.json (and prints it).
"""

from __future__ import annotations

import argparse
import logging
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import write_result  # benchmarks/common.py

from safepretrain.config import ArmConfig, CurriculumConfig, ModelConfig, PretrainConfig
from safepretrain.data.shards import load_shards, write_shard
from safepretrain.train.curriculum import CurriculumSampler, arm_schedule
from safepretrain.train.loop import autocast, make_optimizer, train
from safepretrain.train.model import Transformer, flops_per_token
from safepretrain.utils import setup_logging

VOCAB = 4096


def make_shards(folder: Path, tokens: int) -> dict:
    rng = np.random.default_rng(0)
    for stream in ("safe", "rephrased", "refusal", "moral_ed", "tagged"):
        write_shard(folder, stream, [list(rng.integers(6, VOCAB, size=tokens))], eos_id=0)
    return load_shards(folder)


def bare_loop(model_cfg: ModelConfig, cfg: PretrainConfig, batches: list) -> float:
    """Tokens/s of the minimal loop: forward, backward, step."""
    torch.manual_seed(0)
    model = Transformer(model_cfg).train()
    opt = make_optimizer(model, cfg)
    fn = torch.compile(model) if cfg.compile else model
    device = torch.device("cpu")
    t0 = time.perf_counter()
    for x, y in batches:
        with autocast(device, cfg.precision):
            _, loss = fn(x, targets=y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    loss.item()
    return sum(x.numel() for x, _ in batches) / (time.perf_counter() - t0)


def our_loop(model_cfg: ModelConfig, cfg: PretrainConfig, sampler: CurriculumSampler, out: Path) -> float:
    res = train(cfg, model_cfg, sampler, out, seed=0, label="bench")
    return res.tokens_per_s


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--preset", default="tiny")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--compile", action="store_true", help="torch.compile both loops (cold compile excluded)")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "train_throughput.json"))
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="the device's peak TFLOP/s at this precision, for an MFU figure (e.g. 989 for an H100 in bf16)")
    args = p.parse_args(argv)

    setup_logging(level=logging.WARNING)  # the step lines are still formatted and emitted (to a silent logger)
    model_cfg = ModelConfig(preset=args.preset, vocab_size=VOCAB)
    cfg = PretrainConfig(batch_size=args.batch_size, seq_len=args.seq_len, precision=args.precision, warmup_steps=5,
                         compile=args.compile)
    budget = args.steps * args.batch_size * args.seq_len
    with tempfile.TemporaryDirectory() as tmp:
        shards = make_shards(Path(tmp) / "shards", 200_000)
        cur = CurriculumConfig(token_budget=budget)
        sampler = CurriculumSampler(arm_schedule(ArmConfig(name="b", start=0.5), cur, {s: len(v) for s, v in
                                                                                          shards.items()}),
                                    shards, args.batch_size, args.seq_len, seed=0)
        batches = [sampler.batch(s)[:2] for s in range(sampler.total_steps)]
        bare_loop(model_cfg, cfg, batches[:5])  # warm-up (allocator, kernels)
        bare, ours = [], []
        for r in range(args.repeats):  # alternate who goes first, so drift in machine speed hits both
            run_ours = lambda r=r: ours.append(our_loop(model_cfg, cfg, sampler, Path(tmp) / f"run{r}"))  # noqa: E731
            run_bare = lambda: bare.append(bare_loop(model_cfg, cfg, batches))  # noqa: E731
            for run in ((run_bare, run_ours) if r % 2 == 0 else (run_ours, run_bare)):
                run()
    result = {
        "benchmark": "train_throughput",
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": {"platform": platform.platform(), "cpu_threads": torch.get_num_threads(),
                    "torch": torch.__version__, "python": sys.version.split()[0]},
        "setup": {"preset": args.preset, "params": Transformer(model_cfg).num_params(), "steps": args.steps,
                  "batch_size": args.batch_size, "seq_len": args.seq_len, "precision": args.precision,
                  "compile": args.compile,
                  "repeats": args.repeats},
        "bare_tokens_per_s": bare,
        "ours_tokens_per_s": ours,
        "bare_median": statistics.median(bare),
        "ours_median": statistics.median(ours),
        "ratio_ours_over_bare": statistics.median(ours) / statistics.median(bare),
    }
    # MFU: model FLOPs per token (model.flops_per_token: 6 N for forward + backward of the weights, plus 12 L d T
    # for attention scores and values, as in the PaLM appendix) times tokens/s, over the device's peak; the peak is
    # the user's (--peak-tflops), since a CPU's depends on its cores, clocks and vector units.
    model_flops = flops_per_token(model_cfg, args.seq_len)
    result["model_flops_per_token"] = model_flops
    result["ours_tflops"] = model_flops * result["ours_median"] / 1e12
    if args.peak_tflops:
        result["peak_tflops"] = args.peak_tflops
        result["mfu"] = result["ours_tflops"] / args.peak_tflops
    return write_result(result, args.out)


if __name__ == "__main__":
    main()
