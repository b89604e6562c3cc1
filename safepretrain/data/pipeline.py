"""The data stage: world sample → scoring → datatrove passes → report card → tokenizer → shards.

Two step folders. `scoring/` (`run_scoring_stage`) reads every input once and scores it: it depends only on
the world, the reader and the scorers, so a routing or intervention change, or another run with
`data.scores_from`, reuses it. `data/` (`run_data_stage`) applies the routing policy and the interventions. The
passes are plain datatrove pipelines run by the configured executor (local, Slurm, Ray): `score` (read,
in-process scorers, the LLM rubric when configured), then `route` (routing, tag, template generators), then with
`generator: llm`, `llm_rephrase`, `llm_refusal` and `llm_moral_ed`.

```
scoring/
  input/world.jsonl           the documents read from the world (seeded sample); user corpora are read in place
  scorer/                     head.safetensors + scorer.json (held-out F1 / Recall@1 / Recall@3)
  scored/                     every document read, its scores as metadata (harm_score, chunk_scores, scores_by)
  rejected/                   unreadable records (<rank>.jsonl) and failed rubric scores (llm_rubric/), with reasons
  logs/score/, llm_checkpoints/   datatrove logs, stats, completion markers; request cache and checkpoints
data/
  scores/<rank>.jsonl.gz      id, source, score 0-5, chunk scores, per-scorer scores, harm category
  streams/<stream>/           the routed and intervened documents
  rejected/<pass>/            documents whose LLM generation finally failed, with the reason
  logs/<pass>/, llm_checkpoints/<pass>/   as above, per pass (a rerun skips finished passes and ranks)
  report_card.{json,md,png}   score histogram per source, harm categories, stream sizes, rejects, scorer quality
  tokenizer.json, shards/     BPE with special tokens; one token shard per stream
```

The `tagged` stream is stored untagged: `encode_stream` inserts the tag ids as it encodes it (paper Alg. 2 on ids,
`TextTokenizer.encode_tagged`), so the tokenizer is trained on text without the tag's characters (the tag is one
special token whose characters never reach BPE when text is encoded; counting them spent merges on its pieces).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from datatrove.pipeline.readers import JsonlReader
from datatrove.pipeline.writers import JsonlWriter

from safepretrain.config import STREAMS, ConfigError, StudyConfig
from safepretrain.config.data import DataConfig
from safepretrain.data import interventions as iv
from safepretrain.data import llm
from safepretrain.data.executors import make_executor, merge_rank_stats, run_passes
from safepretrain.data.llm import LLMRunner, check_endpoint, inference_config
from safepretrain.data.read_step import ReadCorpus
from safepretrain.data.records import read_stream
from safepretrain.data.report_card import REPORT_CARD, build_report_card
from safepretrain.data.scorers import SCORERS, rollouts
from safepretrain.data.shards import TokenShard, load_shards, write_shard
from safepretrain.data.steps import ScoreHarm, SelectRouted, StreamReader, derived, route_and_intervene
from safepretrain.data.tokenizer import TextTokenizer, special_tokens, train_tokenizer
from safepretrain.utils import CorruptFileError, StepMarker, files_in, log, read_json, write_jsonl
from safepretrain.world import World

ALL_STREAMS = [*STREAMS, "val"]
TOKENIZER_FILE, SHARDS = "tokenizer.json", "shards"  # inside the data folder (and REPORT_CARD)
# What the data stage's output means beyond its config; a change rebuilds every data stage. 2: `tagged` stored
# untagged, its tags inserted on ids, the tokenizer trained without the tag's characters.
DATA_FORMAT = 2


@dataclass
class DataArtifacts:
    folder: Path
    tokenizer: TextTokenizer
    shards: dict[str, TokenShard]
    report: dict

    def stream_records(self, stream: str) -> list[dict]:
        return read_stream(self.folder, stream)


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


def fit_scorer(cfg: StudyConfig, world: World, folder: Path, kind: str = "embedding") -> dict:
    """Fit scorer `kind` (one with a `fit` option in SCORERS) on the world's labels into `folder`; its metrics."""
    marker = StepMarker(folder, scoring_hash(cfg))
    if marker.is_done():
        return marker.info()["metrics"]
    marker.start()
    labels = list(world.scorer_labels)
    if cfg.data.scorer.max_label_examples and len(labels) > cfg.data.scorer.max_label_examples:
        labels = random.Random(cfg.data.seed).sample(labels, cfg.data.scorer.max_label_examples)
    log.info(f"scorer: fitting the 6-way head on {len(labels)} labelled examples")
    scorer, metrics = SCORERS[kind].options["fit"]([r["text"] for r in labels], [int(r["score"]) for r in labels],
                                                   cfg.data.scorer, seed=cfg.data.seed)
    scorer.save(folder, metrics)
    log.info("scorer: held-out " + " ".join(f"{k}={v:.3f}" for k, v in metrics.items()
                                             if isinstance(v, float)))
    marker.finish(outputs=files_in(folder), metrics=metrics)
    return metrics


def doc_row(self, doc) -> dict:  # datatrove writer adapters are bound methods
    return {"id": doc.id, "text": doc.text, **doc.metadata}


def score_row(self, doc) -> dict:
    m = doc.metadata
    row = {"id": doc.id, "source": m["source"], "kind": m.get("kind"), "score": m["harm_score"],
           "chunk_scores": m["chunk_scores"], "category": m.get("category")}
    row.update({k: m[k] for k in ("truth", "special_strings", "scores_by") if k in m})
    return row


def llm_row(stream: str):
    """Writer adapter of an InferenceRunner pass: an accepted generation becomes a `stream` document; a document
    whose generation (or rubric score) finally failed becomes a `rejected/` row with its reason."""

    def row(self, doc) -> dict:
        m = doc.metadata
        if m.get("outcome") != "ok":
            return {"file": f"llm:{stream}", "id": doc.id, "reason": m.get("reject_reason", "no_outcome"),
                    "raw": doc.text[:2000]}
        if stream == "scored":
            return {"id": doc.id, "text": doc.text,
                    **{k: v for k, v in m.items() if k not in ("outcome", "outcome_path", "rollout_results")}}
        extra = {k: m[k] for k in ("style",) if k in m}
        out = derived(doc, stream, m["generated"], source_id=m.get("source_id", doc.id.rsplit(":", 1)[0]), **extra)
        return {"id": out.id, "text": out.text, **out.metadata}

    return row


@dataclass
class Pass:
    """One datatrove pipeline of the data stage, with its own logging folder `logs/<name>` (completion markers,
    stats, task logs): a rerun skips the passes and ranks that finished."""

    name: str
    pipeline: list
    tasks: int
    gpus: int = 0


def llm_pass(cfg: StudyConfig, folder: Path, name: str, rollout, reader, stream: str) -> Pass:
    """An InferenceRunner pass: `reader` → rollout → `streams/<stream>/` or `rejected/<name>/`."""


    rollout.paths = {"ok": "scored" if stream == "scored" else f"streams/{stream}", "rejected": f"rejected/{name}"}
    writer = JsonlWriter(str(folder), output_filename="${outcome_path}/${rank}_chunk_${chunk_index}.jsonl.gz",
                         adapter=llm_row(stream))
    runner = LLMRunner(rollout, inference_config(cfg.data.llm), writer,
                       checkpoints_local_dir=str(folder / "llm_checkpoints" / name),
                       records_per_chunk=cfg.data.llm.records_per_chunk)
    return Pass(name, [*reader, runner], cfg.data.tasks, gpus=cfg.data.slurm.gpus_per_task)


def encode_stream(tok: TextTokenizer, stream: str, records: list[dict], data: DataConfig) -> list[list[int]]:
    """The token ids of a stream's records: `tagged` records get the harmfulness tag inserted on their ids (the
    draws of `iv.tagged_text`), every other stream is encoded as it is."""
    texts = [r["text"] for r in records]
    if stream != "tagged":
        return tok.encode_batch(texts)
    return tok.encode_tagged(texts, [iv.tag_rng(r["source_id"], data.seed) for r in records],
                             data.interventions.tag_probability)


def scoring_hash(cfg: StudyConfig) -> str:
    """What the scores depend on: the world and corpora, the reader's limits and special strings, the scorers
    (and the LLM when it scores). Routing, interventions and the tokenizer are left out: they reuse the scores."""
    d = cfg.data
    extra = {"seed": d.seed, "tasks": d.tasks, "scorer": d.scorer.model_dump(mode="json"), "tag": d.interventions.tag,
             "llm": d.llm.model_dump(mode="json") if rollouts(d.scorer.kinds) else None}
    return cfg.stage_hash("world", extra=extra)


def score_pass(cfg: StudyConfig, input_files: list[str], folder: Path) -> Pass:
    """read → in-process scorers → [LLM rubric] → `scored/` (every document, its scores as metadata)."""


    data, sc = cfg.data, cfg.data.scorer
    read_and_score = [
        ReadCorpus([str(f) for f in input_files], str(folder / "rejected"), cfg.world.max_words_per_doc,
                   specials=special_tokens(data.interventions.tag), max_bytes=cfg.world.max_record_bytes,
                   input_keys={c: (cfg.world.corpus_text_key, cfg.world.corpus_id_key) for c in cfg.world.corpus}),
        ScoreHarm(str(folder / "scorer"), sc.chunk_words, kinds=sc.kinds, settings=sc),
    ]
    rollout = rollouts(sc.kinds)
    if not rollout:
        return Pass("score", [*read_and_score, JsonlWriter(str(folder / "scored"), output_filename="${rank}.jsonl.gz",
                                                           adapter=doc_row)], data.tasks)
    [name] = rollout  # one rollout scorer per study: its pass writes `scored/`
    score = llm_pass(cfg, folder, name, SCORERS[name].build(cfg), read_and_score, "scored")
    score.name = "score"
    return score


def route_passes(cfg: StudyConfig, scoring: Path, folder: Path) -> list[Pass]:
    """route: `scoring/scored/` → `scores/` summary → route → categorise → tag → [template generators] → `streams/`;
    with `generator: llm`, then llm_rephrase and llm_refusal (InferenceRunner passes), then llm_moral_ed."""


    data = cfg.data
    generate = data.interventions.generator == "template"
    passes = [Pass("route", [
        JsonlReader(str(scoring / "scored"), glob_pattern="*.jsonl.gz"),
        JsonlWriter(str(folder / "scores"), output_filename="${rank}.jsonl.gz", adapter=score_row),
        *route_and_intervene(data, cfg.world.val_fraction, data.seed, generate=generate),
        JsonlWriter(str(folder / "streams"), output_filename="${stream}/${rank}.jsonl.gz", adapter=doc_row),
    ], data.tasks)]
    if generate:
        return passes
    specials = tuple(special_tokens(data.interventions.tag))

    def read(stream, scores=None):
        reader = StreamReader(str(folder / "streams" / stream), glob_pattern="*.jsonl.gz")
        return [reader, SelectRouted(scores)] if scores else [reader]

    def rollout(kind):
        return kind(data.llm, data.seed, specials=specials)

    passes += [llm_pass(cfg, folder, "llm_rephrase", rollout(llm.RephraseRollout),
                        read("unsafe", data.routing.rephrase_scores), "rephrased"),
               llm_pass(cfg, folder, "llm_refusal", rollout(llm.RefusalRollout),
                        read("unsafe", data.routing.refusal_scores), "refusal")]
    if data.interventions.moral_education:  # from the dialogues, once they exist
        passes.append(llm_pass(cfg, folder, "llm_moral_ed", rollout(llm.MoralEducationRollout), read("refusal"),
                               "moral_ed"))
    return passes


def uses_llm(cfg: StudyConfig) -> bool:
    return cfg.data.interventions.generator == "llm" or bool(rollouts(cfg.data.scorer.kinds))


def run_passes_for(cfg: StudyConfig, passes: list[Pass], folder: Path) -> None:

    if any(p.name.startswith("llm_") or p.name == "score" and rollouts(cfg.data.scorer.kinds) for p in passes):

        check_endpoint(cfg.data.llm)
    executors, previous = [], None
    for p in passes:
        previous = make_executor(cfg.data, p.pipeline, str(folder / "logs" / p.name), f"safepretrain_{p.name}",
                                 depends=previous, tasks=p.tasks, gpus=p.gpus)
        executors.append(previous)
    run_passes(executors)
    for p in passes:
        merge_rank_stats(folder / "logs" / p.name)


def scores_from_problems(cfg: StudyConfig) -> list[str]:
    """Why `data.scores_from` cannot be reused by `cfg` (empty when it can): the folder must hold a finished scoring
    step of this scoring config (`scoring_hash`) whose recorded outputs still have their checksums, exactly what a
    run's own scoring step checks before it skips itself. A run's own step recomputes what fails; another run's
    folder is never rewritten, so here it is refused: tampered scores would route harmful documents as safe."""
    folder = Path(cfg.data.scores_from)
    field = f"data.scores_from: {folder}"
    again = "or remove data.scores_from to score in this run"
    done = folder / "done.json"
    if not folder.is_dir():
        return [f"{field} is not a folder; give the scoring/ folder of a finished run (e.g. runs/<study>/scoring; a "
                f"relative path is read from the config file's folder), {again}"]
    if not done.is_file():
        return [f"{field} holds no finished scoring step (no {done.name}); give the scoring/ folder of a finished run, "
                f"finish that run first, {again}"]
    try:
        info = read_json(done)
    except CorruptFileError as err:
        return [f"{field}: {err}"]
    if (found := info.get("config_hash")) != scoring_hash(cfg):
        return [f"{field} was scored with another world or scorer config (hash {found} != {scoring_hash(cfg)}); use "
                "that run's world, data.seed, data.tasks, data.scorer (and data.llm for llm_rubric), " + again]
    if not info.get("checksums"):
        return [f"{field}: its {done.name} records no checksums of the scores, so they cannot be verified; rerun "
                f"that study to score again, {again}"]
    changed = StepMarker(folder, scoring_hash(cfg)).changed_outputs(info, first_only=False)
    return [f"{field} was changed since its run scored it ({c}); the scores cannot be trusted. Rerun that study to "
            f"score again, {again}" for c in changed[:5]]


def run_scoring_stage(cfg: StudyConfig, world: World, scoring_dir: Path) -> tuple[Path, dict]:
    """Run (or reuse) the scoring pass: `scoring/` holds every document read with its scores, once, whatever
    the routing and interventions (`data.scores_from` reuses another run's). Returns (folder, scorer metrics)."""
    if cfg.data.scores_from:
        if problems := scores_from_problems(cfg):
            raise ConfigError("invalid config:\n" + "\n".join(f"- {p}" for p in problems))
        folder = Path(cfg.data.scores_from)
        log.info(f"scoring: reusing {folder} (config hash and checksums verified)")
        return folder, read_json(folder / "done.json").get("metrics", {})
    folder = scoring_dir
    marker = StepMarker(folder, scoring_hash(cfg))
    if not marker.is_done():
        marker.start()
        docs = sample_world_documents(world, cfg.world.sources, cfg.world.max_docs_per_source, cfg.data.seed)
        world_file = folder / "input" / "world.jsonl"
        keep = ("id", "source", "kind", "text", "truth", "subject", "category")  # the last three: organism only
        write_jsonl(world_file, ({k: d[k] for k in keep if k in d} for d in docs))
        log.info(f"data: {len(docs)} world documents from {len({d['source'] for d in docs})} sources"
                 + (f" + {len(cfg.world.corpus)} corpus input(s)" if cfg.world.corpus else ""))
        fitted = [k for k in cfg.data.scorer.kinds if "fit" in SCORERS[k].options]
        metrics = fit_scorer(cfg, world, folder / "scorer", fitted[0]) if fitted else {}
        log.info(f"data: scoring pass ({', '.join(cfg.data.scorer.kinds)}), {cfg.data.tasks} task(s), "
                 f"executor={cfg.data.executor}")
        run_passes_for(cfg, [score_pass(cfg, [str(world_file), *cfg.world.corpus], folder)], folder)
        if not (scored := files_in(folder / "scored")):  # never mark done what the route pass cannot read
            raise RuntimeError(f"scoring: no document was scored, so the step is not marked done; every one is in "
                               f"{folder / 'rejected'} with its reason (check the scorers' settings, then rerun)")
        marker.finish(outputs=scored, metrics=metrics)
    return folder, marker.info().get("metrics", {})


def data_hash(cfg: StudyConfig) -> str:
    """The data stage's inputs: its config sections, the scores it routes by and the output format. Every stage
    trained on its shards includes it (a rebuilt tokenizer or data stage retrains them)."""
    return cfg.stage_hash("world", "data", "tokenizer", extra={"scoring": scoring_hash(cfg), "format": DATA_FORMAT})


def run_data_stage(cfg: StudyConfig, world: World, folder: Path, scoring_dir: Path) -> DataArtifacts:
    """Run (or reuse) the data stage for this config in `folder` (scores in `scoring_dir`, or `data.scores_from`);
    every arm and seed shares its output."""
    scoring, metrics = run_scoring_stage(cfg, world, scoring_dir)
    marker = StepMarker(folder, data_hash(cfg))
    if not marker.is_done():
        marker.start()
        passes = route_passes(cfg, scoring, folder)
        log.info(f"data: datatrove passes {' → '.join(p.name for p in passes)}, {cfg.data.tasks} task(s) each, "
                 f"executor={cfg.data.executor}")
        run_passes_for(cfg, passes, folder)

        texts = (r["text"] for s in STREAMS for r in read_stream(folder, s))
        tok = TextTokenizer(train_tokenizer(texts, cfg.tokenizer.vocab_size, cfg.tokenizer.min_frequency,
                                            cfg.data.interventions.tag), cfg.data.interventions.tag)
        tok.save(folder / TOKENIZER_FILE)
        sizes = {}
        for stream in ALL_STREAMS:
            recs = read_stream(folder, stream)
            if uses_llm(cfg):  # InferenceRunner writes in completion order: sort, so reruns give the same shards
                recs.sort(key=lambda r: r["id"])
            meta = write_shard(folder / SHARDS, stream, encode_stream(tok, stream, recs, cfg.data), tok.eos_id)
            sizes[stream] = {"docs": meta["docs"], "tokens": meta["tokens"]}
        report = build_report_card(folder, sizes, metrics, scoring=scoring)
        log.info("data: streams " + ", ".join(f"{s}={v['tokens']:,} tok" for s, v in sizes.items()))
        if report["rejected"]["total"]:
            log.warning(f"data: {report['rejected']['total']} record(s) rejected, reasons "
                        f"{report['rejected']['by_reason']}; see {scoring / 'rejected'} and {folder / 'rejected'}")
        outputs = [*files_in(folder / SHARDS), *files_in(folder / "streams"), folder / TOKENIZER_FILE,
                   folder / REPORT_CARD, *files_in(folder, "report_card.png")]
        marker.finish(outputs=outputs, streams=sizes)
    return load_data_folder(folder, cfg.data.interventions.tag)


def load_tokenizer(folder: Path, tag: str) -> TextTokenizer:
    """The tokenizer a finished data stage trained (with the harmfulness tag `tag` as a special token)."""
    return TextTokenizer.load(folder / TOKENIZER_FILE, tag)


def load_data_folder(folder: Path, tag: str) -> DataArtifacts:
    """What a finished data stage left in `folder`: its tokenizer, token shards and report card."""
    return DataArtifacts(folder, load_tokenizer(folder, tag), load_shards(folder / SHARDS),
                         read_json(folder / REPORT_CARD))
