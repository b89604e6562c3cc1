"""The data stage's local executor with 1 vs 2 workers on the default world: the speed-up of `data.workers`.

    .venv/bin/python benchmarks/data_workers.py [--config configs/default.yaml] [--repeat 2]

Fits the scorer once, then runs the datatrove passes (score, route) of the data stage from scratch in fresh
folders, alternating workers=1 and workers=2 (`data.tasks` = 2 both times), `--repeat` times each, so machine
noise hits both alike. Reports the wall seconds per run, their medians and speed-up = median(1) / median(2).
With workers=1 the ranks run one after the other in this process (torch may use every core inside a rank);
with 2 they run at once in two worker processes. Results go to benchmarks/results/data_workers.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from safepretrain.config import load_config
from safepretrain.data.pipeline import fit_scorer, route_passes, run_passes_for, sample_world_documents, score_pass
from safepretrain.utils import write_jsonl
from safepretrain.world import world_for


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="configs/default.yaml")
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-workers-"))
    cfg = load_config(args.config, [f"out_dir={tmp}", "data.tasks=2"])
    world = world_for(cfg)
    docs = sample_world_documents(world, cfg.world.sources, cfg.world.max_docs_per_source, cfg.data.seed)
    base = tmp / "base"
    write_jsonl(base / "input" / "world.jsonl", docs)
    fit_scorer(cfg, world, base / "scorer")
    times: dict[int, list[float]] = {1: [], 2: []}
    for rep in range(args.repeat):
        for workers in (1, 2):
            run_cfg = load_config(args.config, [f"out_dir={tmp}", "data.tasks=2", f"data.workers={workers}"])
            folder = tmp / f"w{workers}_r{rep}"
            shutil.copytree(base, folder)
            t0 = time.perf_counter()
            run_passes_for(run_cfg, [score_pass(run_cfg, [str(folder / "input" / "world.jsonl")], folder)], folder)
            run_passes_for(run_cfg, route_passes(run_cfg, folder, folder / "data"), folder / "data")
            times[workers].append(round(time.perf_counter() - t0, 2))
            print(f"workers={workers} repeat={rep}: {times[workers][-1]:.1f} s", flush=True)
    med = {w: statistics.median(t) for w, t in times.items()}
    result = {"config": args.config, "documents": len(docs), "tasks": 2, "repeat": args.repeat,
              "seconds": {str(w): t for w, t in times.items()},
              "median_seconds": {str(w): m for w, m in med.items()},
              "speedup_2_over_1": round(med[1] / med[2], 3),
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform()}}
    out = Path(__file__).parent / "results" / "data_workers.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
