"""The data stage: world sample → scorer → datatrove pipeline → report card → tokenizer → shards.

```
data/
  input/world.jsonl           the documents read (seeded sample of the world, plus user corpora)
  scorer/                     head.safetensors + scorer.json (held-out F1 / Recall@1 / Recall@3)
  logs/                       datatrove logs, stats.json and completion markers (a rerun skips done tasks)
  scores/<rank>.jsonl.gz      id, source, score 0-5, chunk scores, harm category per document
  streams/<stream>/<rank>.jsonl.gz   the routed and intervened documents
  rejected/<rank>.jsonl       unreadable records with their reason
  report_card.{json,md}       score histogram per source, stream sizes, rejects, scorer quality
  tokenizer.json, shards/     BPE with special tokens; one token shard per stream
```
"""

from __future__ import annotations

import json
import os
import random
from copy import deepcopy
from dataclasses import dataclass
from pathlib import Path

from safepretrain.config import STREAMS, StudyConfig
from safepretrain.data.report_card import build_report_card
from safepretrain.data.shards import TokenShard, load_shards, write_shard
from safepretrain.data.steps import ReadCorpus, RouteAndIntervene, ScoreHarm
from safepretrain.data.tokenizer import TextTokenizer, special_tokens, train_tokenizer
from safepretrain.utils import StepMarker, files_in, log, read_json, read_jsonl, write_jsonl
from safepretrain.world import World

ALL_STREAMS = [*STREAMS, "val"]


@dataclass
class DataArtifacts:
    folder: Path
    tokenizer: TextTokenizer
    shards: dict[str, TokenShard]
    report: dict

    def stream_records(self, stream: str) -> list[dict]:
        return read_stream(self.folder, stream)


def read_stream(folder: Path, stream: str) -> list[dict]:
    """Documents of one stream, in rank order (deterministic for a given task count)."""
    return [r for p in sorted((folder / "streams" / stream).glob("*.jsonl.gz")) for r in read_jsonl(p)]


def sample_world_documents(world: World, sources: list[str] | None, per_source: int | None,
                           seed: int) -> list[dict]:
    """A seeded sample of at most `per_source` documents from each selected source."""
    chosen = []
    for source in sorted(sources or world.sources()):
        docs = sorted((d for d in world.documents if d["source"] == source), key=lambda d: d["id"])
        if per_source is not None and len(docs) > per_source:
            docs = sorted(random.Random(f"{seed}:{source}").sample(docs, per_source), key=lambda d: d["id"])
        chosen.extend(docs)
    return chosen


def fit_scorer(cfg: StudyConfig, world: World, folder: Path) -> dict:
    from safepretrain.data.scoring import EmbeddingScorer

    marker = StepMarker(folder, cfg.stage_hash("data", "world"))
    if marker.is_done():
        return marker.info()["metrics"]
    marker.start()
    labels = list(world.scorer_labels)
    if cfg.data.scorer.max_label_examples and len(labels) > cfg.data.scorer.max_label_examples:
        labels = random.Random(cfg.data.seed).sample(labels, cfg.data.scorer.max_label_examples)
    log.info(f"scorer: fitting the 6-way head on {len(labels)} labelled examples")
    scorer, metrics = EmbeddingScorer.fit([r["text"] for r in labels], [int(r["score"]) for r in labels],
                                          cfg.data.scorer, seed=cfg.data.seed)
    scorer.save(folder, metrics)
    log.info("scorer: held-out " + " ".join(f"{k}={v:.3f}" for k, v in metrics.items()
                                             if isinstance(v, float)))
    marker.finish(outputs=files_in(folder), metrics=metrics)
    return metrics


def build_pipeline(cfg: StudyConfig, input_files: list[Path], folder: Path) -> list:
    """The datatrove pipeline: a plain list of steps, runnable by any datatrove executor."""
    from datatrove.pipeline.writers import JsonlWriter

    def score_row(self, doc) -> dict:  # datatrove adapters are bound methods
        m = doc.metadata
        row = {"id": doc.id, "source": m["source"], "kind": m.get("kind"), "score": m["harm_score"],
               "chunk_scores": m["chunk_scores"], "category": m["category"]}
        row.update({k: m[k] for k in ("truth", "special_strings") if k in m})
        return row

    def stream_row(self, doc) -> dict:
        return {"id": doc.id, "text": doc.text, **doc.metadata}

    return [
        ReadCorpus([str(f) for f in input_files], str(folder / "rejected"), cfg.world.max_words_per_doc,
                   specials=special_tokens(cfg.data.interventions.tag), max_bytes=cfg.world.max_record_bytes),
        ScoreHarm(str(folder / "scorer"), cfg.data.scorer.chunk_words),
        JsonlWriter(str(folder / "scores"), output_filename="${rank}.jsonl.gz", adapter=score_row),
        RouteAndIntervene(cfg.data, cfg.world.val_fraction, cfg.data.seed),
        JsonlWriter(str(folder / "streams"), output_filename="${stream}/${rank}.jsonl.gz", adapter=stream_row),
    ]


def _die_with_parent(parent_pid: int) -> None:
    """Pool initializer: the kernel kills this worker when the study process dies (Linux PR_SET_PDEATHSIG),
    so a `kill -9` of the study leaves no worker running on alone."""
    import ctypes
    import signal

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: workers then end when they next find the pipe closed
        pass
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def _executor_class():
    from datatrove.executor import LocalPipelineExecutor

    class InProcessExecutor(LocalPipelineExecutor):
        """LocalPipelineExecutor whose ranks leave nothing behind when the study is killed.

        datatrove's executor always starts a multiprocess Manager server; a `kill -9` of the study left it
        orphaned (~600 MB) with a /tmp/pymp-* folder, and with `workers > 1` its Pool workers ran on too.
        Here `workers=1` runs the ranks in this process, and `workers > 1` runs them in a Pool of workers
        that die with the study (`_die_with_parent`); neither needs a Manager."""

        def run(self):
            self._launched = True
            ranks = self.get_incomplete_ranks(range(self.local_rank_offset, self.local_rank_offset + self.local_tasks))
            if not ranks:
                return
            self.save_executor_as_json()
            if self.workers == 1:
                pipeline = self.pipeline
                for rank in ranks:
                    self.pipeline = deepcopy(pipeline)
                    self._run_for_rank(rank, 0)
                self.pipeline = pipeline
                return
            import multiprocess

            ctx = multiprocess.get_context(self.start_method)
            workers = min(self.workers, len(ranks)) if self.workers > 0 else len(ranks)
            with ctx.Pool(workers, initializer=_die_with_parent, initargs=(os.getpid(),)) as pool:
                # local rank 0 (the one datatrove lets log to the console) goes to the first rank only
                list(pool.imap_unordered(self._run_rank_star, [(r, int(i > 0)) for i, r in enumerate(ranks)]))

        def _run_rank_star(self, rank_and_local: tuple[int, int]):
            return self._run_for_rank(*rank_and_local)

    return InProcessExecutor


def merge_rank_stats(logging_dir: Path) -> dict:
    """`stats.json` = the sum of every finished rank's stats, so a resumed stage counts all documents, not
    only those of its last invocation (datatrove writes the sum of the ranks run by one invocation)."""
    from datatrove.utils.stats import PipelineStats

    total = sum((PipelineStats.from_json(json.loads(p.read_text()))
                 for p in sorted((logging_dir / "stats").glob("*.json"))), start=PipelineStats())
    with open(logging_dir / "stats.json", "w") as f:
        total.save_to_disk(f)
    return json.loads((logging_dir / "stats.json").read_text())


def run_pipeline(cfg: StudyConfig, input_files: list[Path], folder: Path) -> None:
    executor = _executor_class()(
        pipeline=build_pipeline(cfg, input_files, folder),
        tasks=cfg.data.tasks,
        workers=cfg.data.workers,
        logging_dir=str(folder / "logs"),
        start_method="spawn",
    )
    executor.run()
    merge_rank_stats(folder / "logs")


def run_data_stage(cfg: StudyConfig, world: World, run_dir: Path) -> DataArtifacts:
    """Run (or reuse) the data stage for this config; every arm and seed shares its output."""
    folder = run_dir / "data"
    marker = StepMarker(folder, cfg.stage_hash("world", "data", "tokenizer"))
    if not marker.is_done():
        marker.start()
        docs = sample_world_documents(world, cfg.world.sources, cfg.world.max_docs_per_source, cfg.data.seed)
        world_file = folder / "input" / "world.jsonl"
        keep = ("id", "source", "kind", "text", "truth", "subject", "category")  # the last three: organism only
        write_jsonl(world_file, ({k: d[k] for k in keep if k in d} for d in docs))
        inputs = [world_file, *(Path(p) for p in cfg.world.corpus)]
        log.info(f"data: {len(docs)} world documents from {len({d['source'] for d in docs})} sources"
                 + (f" + {len(cfg.world.corpus)} corpus file(s)" if cfg.world.corpus else ""))
        metrics = fit_scorer(cfg, world, folder / "scorer")
        log.info(f"data: datatrove pipeline, {cfg.data.tasks} task(s), executor={cfg.data.executor}")
        run_pipeline(cfg, inputs, folder)

        texts = (r["text"] for s in STREAMS for r in read_stream(folder, s))
        tok = TextTokenizer(train_tokenizer(texts, cfg.tokenizer.vocab_size, cfg.tokenizer.min_frequency,
                                            cfg.data.interventions.tag), cfg.data.interventions.tag)
        tok.save(folder / "tokenizer.json")
        sizes = {}
        for stream in ALL_STREAMS:
            recs = read_stream(folder, stream)
            meta = write_shard(folder / "shards", stream, tok.encode_batch([r["text"] for r in recs]), tok.eos_id)
            sizes[stream] = {"docs": meta["docs"], "tokens": meta["tokens"]}
        report = build_report_card(folder, sizes, metrics)
        log.info("data: streams " + ", ".join(f"{s}={v['tokens']:,} tok" for s, v in sizes.items()))
        if report["rejected"]["total"]:
            log.warning(f"data: {report['rejected']['total']} record(s) rejected, reasons "
                        f"{report['rejected']['by_reason']}; see {folder / 'rejected'}")
        outputs = [*files_in(folder / "shards"), *files_in(folder / "streams"), folder / "tokenizer.json",
                   folder / "report_card.json"]
        marker.finish(outputs=outputs, streams=sizes)
    tok = TextTokenizer.load(folder / "tokenizer.json", cfg.data.interventions.tag)
    return DataArtifacts(folder, tok, load_shards(folder / "shards"), read_json(folder / "report_card.json"))
