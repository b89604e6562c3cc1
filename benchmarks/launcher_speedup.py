"""The local-parallel launcher vs the sequential one, on the same study in one run.

    .venv/bin/python benchmarks/launcher_speedup.py [--config configs/smoke.yaml] [--max-parallel 2] [key=value ...]

Runs the study twice into fresh folders, `--launcher local` then `--launcher local-parallel`, and times each whole
command (data stage, trunk, arms, report). The default is the smoke study reduced to one seed and three arms, two
of which branch from the shared trunk. Both runs' results.csv are compared (equal when the parts' thread counts
do not change the floating-point sums; reported, not asserted). Writes benchmarks/results/launcher_speedup.json.
"""

from __future__ import annotations

import argparse
import filecmp
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import write_result  # benchmarks/common.py

REDUCED = ["seeds=[0]", "curriculum.arms=[{name: raw, data: raw}, {name: start_20, start: 0.2}, "
           "{name: safe_only, start: 1.0}]"]


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser()
    p.add_argument("--config", default="configs/smoke.yaml")
    p.add_argument("--max-parallel", type=int, default=2)
    p.add_argument("--out", default="benchmarks/results/launcher_speedup.json")
    p.add_argument("overrides", nargs="*", default=REDUCED)
    args = p.parse_args(argv)
    seconds = {}
    with tempfile.TemporaryDirectory() as tmp:
        for launcher in ("local", "local-parallel"):
            run = Path(tmp) / launcher
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "safepretrain", "study", args.config, "--out", str(run),
                            "--launcher", launcher, f"launch.max_parallel={args.max_parallel}", *args.overrides],
                           check=True, capture_output=True)
            seconds[launcher] = time.perf_counter() - t0
        same = filecmp.cmp(Path(tmp) / "local/report/results.csv", Path(tmp) / "local-parallel/report/results.csv",
                           shallow=False)
    return write_result({"benchmark": "launcher_speedup", "config": args.config, "overrides": args.overrides,
                         "max_parallel": args.max_parallel, "cpus": os.cpu_count(), "machine": platform.platform(),
                         "seconds": seconds, "speedup_parallel_over_sequential": seconds["local"]
                         / seconds["local-parallel"], "results_csv_identical": same}, args.out)


if __name__ == "__main__":
    main(sys.argv[1:])
