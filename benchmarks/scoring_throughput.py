"""Harm-scoring throughput of the pipeline's path against the bare MiniLM embedder on the same chunks.

    .venv/bin/python benchmarks/scoring_throughput.py [--per-source 8] [--repeats 3] [--threads 1] [--precision bf16]

Texts: a seeded sample of `--per-source` documents from each source of the embedded pack (`load_world()`), cut
to `world.max_words_per_doc` words as ReadCorpus does, then chunked at `scorer.chunk_words`. Measured in this
process, interleaved (the order alternates between repeats) and reported as the median of the repeats, since
these machines are noisy and only the ratio within one run means much:
  - bare:         `scoring.embed(chunks, batch_size, precision)`, every chunk in one call;
  - bare_batched: the same, one call per `--batch-docs` documents (the pipeline's batching, nothing else);
  - scoring:      what ScoreHarm does per batch of `--batch-docs` documents: `score_documents(EmbeddingScorer,
                  texts, chunk_words)` plus `categories` of the worst chunks' embeddings.
The head has random weights (speed only; fitting it would embed ~4,000 labelled texts). The encoder load and
the category descriptions' embedding are paid once before timing (once per task in a real run) and reported
apart as `setup_seconds`; `overhead_seconds_without_embedding` is the scoring path with the embeddings
handed over precomputed (what the pipeline adds to the encoder). Torch is held to `--threads` threads so the
numbers are per core by default.
Writes benchmarks/results/scoring_throughput.json (and prints it). Goal: ratio scoring/bare >= 0.9.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from safepretrain.config import ScorerConfig, WorldConfig
from safepretrain.data.scoring import EmbeddingScorer, LinearHead, chunk_text, embed, load_encoder, score_documents
from safepretrain.world import load_world


def sample_texts(per_source: int, seed: int, max_words: int) -> list[str]:
    """The data stage's per-source seeded sample (pipeline.sample_world_documents), cut like ReadCorpus."""
    world = load_world()
    texts = []
    for source in sorted(world.sources()):
        docs = sorted((d for d in world.documents if d["source"] == source), key=lambda d: d["id"])
        if len(docs) > per_source:
            docs = sorted(random.Random(f"{seed}:{source}").sample(docs, per_source), key=lambda d: d["id"])
        texts.extend(" ".join(d["text"].split()[:max_words]) for d in docs)
    return texts


def scoring_overhead(batches: list[list[str]], scorer: EmbeddingScorer, chunk_words: int, x: np.ndarray) -> float:
    """Seconds of the scoring path minus the encoder: chunking, the head, max over chunks and categories, with
    the embeddings handed over precomputed (median of 5; noise-free enough to show it is small)."""

    class Precomputed:
        name = "precomputed"

        def __init__(self):
            self.at = 0

        def score_chunks(self, chunks: list[str]) -> tuple[np.ndarray, np.ndarray]:
            rows = x[self.at : self.at + len(chunks)]
            self.at += len(chunks)
            return scorer.head.predict(rows), rows

    runs = []
    for _ in range(5):
        stub, t = Precomputed(), time.perf_counter()
        for batch in batches:
            results = score_documents(stub, batch, chunk_words)
            scorer.categories(np.stack([r["embedding"] for r in results]))
        runs.append(time.perf_counter() - t)
    return statistics.median(runs)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--per-source", type=int, default=8, help="documents per pack source (10 sources)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--precision", choices=["fp32", "bf16"], default=ScorerConfig().precision)
    ap.add_argument("--batch-docs", type=int, default=64, help="documents per ScoreHarm batch (its default)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = ScorerConfig(precision=args.precision)
    texts = sample_texts(args.per_source, args.seed, WorldConfig().max_words_per_doc)
    chunks = [c for t in texts for c in chunk_text(t, cfg.chunk_words)]
    batches = [texts[i : i + args.batch_docs] for i in range(0, len(texts), args.batch_docs)]
    rng = np.random.default_rng(args.seed)
    t0 = time.perf_counter()
    dim = load_encoder().get_embedding_dimension()  # loads the encoder (once per process / task)
    load_s = time.perf_counter() - t0
    head = LinearHead(rng.normal(size=(6, dim)).astype(np.float32), rng.normal(size=6).astype(np.float32))

    def bare() -> np.ndarray:
        return embed(chunks, cfg.batch_size, cfg.precision)

    def bare_batched() -> None:
        for batch in batches:
            embed([c for t in batch for c in chunk_text(t, cfg.chunk_words)], cfg.batch_size, cfg.precision)

    scorer = EmbeddingScorer(head, cfg)

    def scoring() -> None:
        for batch in batches:
            results = score_documents(scorer, batch, cfg.chunk_words)
            scorer.categories(np.stack([r["embedding"] for r in results]))

    t0 = time.perf_counter()
    x = embed(["warm up"], precision=cfg.precision)  # first forward pass
    t1 = time.perf_counter()
    scorer.categories(x)  # embeds the category descriptions (once per scorer, or per process)
    setup = {"encoder_load": load_s, "first_forward": t1 - t0, "categories": time.perf_counter() - t1}

    variants = {"bare": bare, "bare_batched": bare_batched, "scoring": scoring}
    times: dict[str, list[float]] = {k: [] for k in variants}
    out = {}
    for r in range(args.repeats):
        order = list(variants) if r % 2 == 0 else list(reversed(variants))
        for name in order:
            t = time.perf_counter()
            out[name] = variants[name]()
            times[name].append(time.perf_counter() - t)
    median = {k: statistics.median(v) for k, v in times.items()}
    overhead = scoring_overhead(batches, scorer, cfg.chunk_words, out["bare"])
    result = {
        "documents": len(texts), "chunks": len(chunks), "chunk_words": cfg.chunk_words, "batch_size": cfg.batch_size,
        "batch_docs": args.batch_docs, "precision": cfg.precision, "repeats": args.repeats,
        "median_seconds": {k: round(v, 3) for k, v in median.items()},
        "all_seconds": {k: [round(x, 3) for x in v] for k, v in times.items()},
        "chunks_per_s": {k: round(len(chunks) / v, 1) for k, v in median.items()},
        "docs_per_s": {k: round(len(texts) / v, 1) for k, v in median.items()},
        "ratio_scoring_vs_bare": round(median["bare"] / median["scoring"], 3),
        "ratio_scoring_vs_bare_batched": round(median["bare_batched"] / median["scoring"], 3),
        "ratio_bare_batched_vs_bare": round(median["bare"] / median["bare_batched"], 3),
        "setup_seconds": {k: round(v, 3) for k, v in setup.items()},
        "overhead_seconds_without_embedding": round(overhead, 4),
        "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version(),
        "machine": platform.platform(), "cpu_count": os.cpu_count(),
    }
    path = Path(__file__).parent / "results" / "scoring_throughput.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
