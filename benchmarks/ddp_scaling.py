"""Data-parallel scaling on CPU: 2 gloo processes vs 1 at the same global batch, same model, same batches.

Each configuration runs `safepretrain.train.loop.train` on deterministic random batches; throughput is the
global tokens of the timed steps over their summed step times (metrics.jsonl `dt`: forward, backward,
gradient all-reduce, clip, AdamW), the first `--warmup` steps left out. The CPU threads are split evenly:
one process gets `--threads`, each of the 2 ranks `--threads / 2`. So

    scaling efficiency = tokens/s(2 ranks) / tokens/s(1 process, all threads)

says what the communication and the duplicated work (every rank builds the whole global batch) cost at
equal hardware; `per_rank_efficiency` compares against one process with one rank's share of the threads.
On a 2-core VM this measures overheads, not the speed-up of real GPUs.

    python benchmarks/ddp_scaling.py [--steps 30] [--mode ddp|fsdp2] [--preset tiny] [--repeats 3]

Writes benchmarks/results/ddp_scaling.json (and prints it).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp
from common import write_result  # benchmarks/common.py

from safepretrain.config import ModelConfig, PretrainConfig
from safepretrain.train.loop import train
from safepretrain.train.model import Transformer
from safepretrain.utils import setup_logging

VOCAB = 4096


class RandomBatches:
    """Deterministic global batches: a pure function of the step, as the curriculum sampler is."""

    def __init__(self, steps: int, batch_size: int, seq_len: int):
        self.total_steps, self.batch_size, self.seq_len = steps, batch_size, seq_len

    def batch(self, step: int):
        g = torch.Generator().manual_seed(step)
        data = torch.randint(0, VOCAB, (self.batch_size, self.seq_len + 1), generator=g)
        return data[:, :-1], data[:, 1:], {}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(rank: int, world: int, port: int, threads: int, out: str, args: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(threads)
    setup_logging(level=logging.WARNING)
    cfg = PretrainConfig(batch_size=args["batch_size"], seq_len=args["seq_len"], warmup_steps=5, device="cpu",
                         distributed=args["mode"] if world > 1 else "none")
    model_cfg = ModelConfig(preset=args["preset"], vocab_size=VOCAB)
    train(cfg, model_cfg, RandomBatches(args["steps"], args["batch_size"], args["seq_len"]), Path(out), seed=0,
          label=f"bench{world}")


def tokens_per_s(out: Path, warmup: int) -> float:
    recs = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()][warmup:]
    return sum(r["tokens"] for r in recs) / sum(r["dt"] for r in recs)


def measure(world: int, threads: int, args: dict, tmp: Path, tag: str) -> float:
    out = tmp / tag
    mp.spawn(_run, args=(world, _free_port(), threads, str(out), args), nprocs=world, join=True)
    return tokens_per_s(out, args["warmup"])


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5, help="steps left out of the timing")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--mode", default="ddp", choices=["ddp", "fsdp2"])
    p.add_argument("--preset", default="tiny")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 2, help="CPU threads shared by all ranks")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "ddp_scaling.json"))
    a = p.parse_args(argv)
    args = {"steps": a.steps, "warmup": a.warmup, "mode": a.mode, "preset": a.preset, "batch_size": a.batch_size,
            "seq_len": a.seq_len}
    half = max(1, a.threads // 2)
    load_before = os.getloadavg()[0]  # other work on the machine skews the multi-threaded runs most
    one_all, one_half, two = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(a.repeats):  # interleaved, so drift in machine speed hits every configuration
            one_all.append(measure(1, a.threads, args, Path(tmp), f"one_all{r}"))
            two.append(measure(2, half, args, Path(tmp), f"two{r}"))
            one_half.append(measure(1, half, args, Path(tmp), f"one_half{r}"))
    med = {k: statistics.median(v) for k, v in (("one_all", one_all), ("one_half", one_half), ("two", two))}
    result = {
        "benchmark": "ddp_scaling",
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": {"platform": platform.platform(), "cpu_threads": a.threads, "torch": torch.__version__,
                    "python": sys.version.split()[0], "load_avg_1min_before": load_before,
                    "load_avg_1min_after": os.getloadavg()[0]},
        "setup": {"mode": a.mode, "backend": "gloo", "preset": a.preset,
                  "params": Transformer(ModelConfig(preset=a.preset, vocab_size=VOCAB)).num_params(),
                  "steps": a.steps, "timed_steps": a.steps - a.warmup, "global_batch": a.batch_size,
                  "seq_len": a.seq_len, "repeats": a.repeats, "threads_per_rank_at_2": half},
        "tokens_per_s": {"1_process_all_threads": one_all, "1_process_half_threads": one_half, "2_ranks": two},
        "median_tokens_per_s": med,
        "scaling_efficiency": med["two"] / med["one_all"],
        "per_rank_efficiency": med["two"] / (2 * med["one_half"]),
    }
    return write_result(result, a.out)


if __name__ == "__main__":
    main()
