"""Tag injection + tokenization throughput per core, against bare tokenization of the same texts.

    RAYON_NUM_THREADS=1 .venv/bin/python benchmarks/tag_tokenize_throughput.py --run-dir runs/default [--repeat 3]

Reads the `unsafe` stream of a finished run (the text the tagged stream is made from) and its tokenizer.
Measures, interleaved and repeated so that machine noise hits both alike:
  - baseline: `encode_batch` of the texts as they are;
  - tagged:   `inject_tags` (paper Alg. 2, p = the run's tag_probability) per document, then `encode_batch`.
Reports tokens/s per core for each and their ratio (issue goal: tagged ≥ 1M tok/s/core). Rayon is held to one
thread (RAYON_NUM_THREADS=1, set before tokenizers loads) so the numbers are per core. Results go to
benchmarks/results/tag_tokenize_throughput.json.
"""

from __future__ import annotations

import os

os.environ.setdefault("RAYON_NUM_THREADS", "1")  # before tokenizers is imported: one core

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from safepretrain.config import load_config  # noqa: E402
from safepretrain.data import interventions as iv  # noqa: E402
from safepretrain.data.records import read_stream  # noqa: E402
from safepretrain.data.tokenizer import TextTokenizer  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run-dir", required=True)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    run = Path(args.run_dir)
    cfg = load_config(run / "study.yaml")
    ic = cfg.data.interventions
    tok = TextTokenizer.load(run / "data" / "tokenizer.json", ic.tag)
    texts = [r["text"] for r in read_stream(run / "data", "unsafe")]

    def baseline() -> int:
        return sum(len(ids) for ids in tok.encode_batch(texts))

    def tagged() -> int:
        out = [iv.inject_tags(t, ic.tag, ic.tag_probability, iv.doc_rng(str(i), 0, "bench")) for i, t in
               enumerate(texts)]
        return sum(len(ids) for ids in tok.encode_batch(out))

    times = {"baseline": [], "tagged": []}
    tokens = {}
    for _ in range(args.repeat):
        for name, fn in (("baseline", baseline), ("tagged", tagged)):
            t0 = time.perf_counter()
            tokens[name] = fn()
            times[name].append(time.perf_counter() - t0)
    best = {k: min(v) for k, v in times.items()}
    rate = {k: tokens[k] / best[k] for k in best}
    result = {"run_dir": str(run), "documents": len(texts), "tokens": tokens, "best_seconds": best,
              "tokens_per_s_per_core": {k: round(v) for k, v in rate.items()},
              "ratio_tagged_vs_baseline": round(rate["tagged"] / rate["baseline"], 3),
              "rayon_threads": os.environ["RAYON_NUM_THREADS"], "python": platform.python_version(),
              "machine": platform.platform(), "cpu_count": os.cpu_count()}
    out = Path(__file__).parent / "results" / "tag_tokenize_throughput.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
