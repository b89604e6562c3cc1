"""Rerun variance of pretraining: train the same seed twice and compare the final weights bit for bit.

    .venv/bin/python benchmarks/rerun_determinism.py --run-dir runs/smoke [--steps 80]

Uses the token shards of an existing run directory. For each setting (fp32 eager; bf16 + compile without
and with deterministic kernels) it trains the tiny model twice from seed 0 and records the weights' sha256,
the final loss and the wall time; results go to benchmarks/results/rerun_determinism.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from safepretrain.config import ArmConfig, CurriculumConfig, ModelConfig, PretrainConfig
from safepretrain.data.shards import load_shards
from safepretrain.data.tokenizer import TextTokenizer
from safepretrain.train.curriculum import CurriculumSampler, arm_schedule
from safepretrain.train.loop import train

SETTINGS = [("fp32", False, True), ("bf16", True, False), ("bf16", True, True)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run-dir", required=True)
    ap.add_argument("--steps", type=int, default=80)
    args = ap.parse_args()
    data = Path(args.run_dir) / "data"
    shards = load_shards(data / "shards")
    tok = TextTokenizer.load(data / "tokenizer.json", "<potentially unsafe content>")
    model_cfg = ModelConfig(preset="tiny", vocab_size=tok.vocab_size)
    schedule = arm_schedule(ArmConfig(name="a", start=0.0), CurriculumConfig(token_budget=args.steps * 16 * 128),
                            {s: len(v) for s, v in shards.items()})
    results = []
    for precision, compile_, deterministic in SETTINGS:
        runs = []
        for _ in range(2):
            with tempfile.TemporaryDirectory() as d:
                cfg = PretrainConfig(batch_size=16, seq_len=128, lr=2e-3, warmup_steps=10, precision=precision,
                                     compile=compile_, deterministic=deterministic, device="cpu")
                t0 = time.perf_counter()
                r = train(cfg, model_cfg, CurriculumSampler(schedule, shards, 16, 128, seed=0), Path(d), seed=0,
                          label="rerun")
                digest = hashlib.sha256((r.checkpoint / "model.safetensors").read_bytes()).hexdigest()[:16]
                runs.append({"sha256": digest, "final_loss": r.final_loss, "wall_s": time.perf_counter() - t0})
        results.append({"precision": precision, "compile": compile_, "deterministic": deterministic,
                        "identical": runs[0]["sha256"] == runs[1]["sha256"], "runs": runs})
        print(results[-1], flush=True)
    out = Path(__file__).parent / "results" / "rerun_determinism.json"
    out.write_text(json.dumps({"steps": args.steps, "threads": torch.get_num_threads(), "torch": torch.__version__,
                               "machine": platform.platform(), "results": results}, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
