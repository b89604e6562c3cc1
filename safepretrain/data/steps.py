"""datatrove pipeline steps of the data stage: read → score → route → one step per intervention.

Each step is a `PipelineStep` with `run(data, rank, world_size)`, so the same pipeline runs under
datatrove's local, Slurm or Ray executors, and any one of them fits into someone else's pipeline:

    ReadCorpus → ScoreHarm → RouteDocuments → TagUnsafe → Rephrase → RefusalDialogue → MoralEducation

Scores are stored once, as document metadata (`harm_score`, `chunk_scores`, `scores_by`); routing is a policy
applied afterwards (`RouteDocuments`), so one scoring pass serves every routing choice. `RouteDocuments` emits
each document once, in `safe`, `val` or `unsafe` (`metadata["stream"]`); each intervention step passes every
document through and adds its product after each `unsafe` document in its score range. Steps keep their own
counters (`stat_update`), which datatrove merges into the pass's `stats.json`. Nothing is dropped silently:
unreadable records go to `rejected/` with a reason.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.readers import JsonlReader

from safepretrain.config import DataConfig, ScorerConfig
from safepretrain.data import interventions as iv
from safepretrain.data.scorers import SCORERS, in_process
from safepretrain.data.scoring import chunk_text, embed, nearest_categories, score_documents


class BatchedStep(PipelineStep):
    """A step that works on batches of `batch_docs` documents (`_flush`), keeping their order."""

    batch_docs = 64

    def _flush(self, batch: list[Document]) -> DocumentsPipeline:
        raise NotImplementedError

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        batch: list[Document] = []
        for doc in data:
            batch.append(doc)
            if len(batch) >= self.batch_docs:
                with self.track_time(unit="batch"):
                    yield from self._flush(batch)
                batch = []
        if batch:
            yield from self._flush(batch)


class ScoreHarm(BatchedStep):
    """Score each document 0-5 with the in-process scorers (`embedding`, `hf_classifier`) and name its harm
    category. Document score = max over chunks; with several scorers, chunk scores are the max over scorers
    (the paper's max-ensemble), and each scorer's document score is kept in `scores_by`. The `llm_rubric`
    scorer runs after this step, in datatrove's InferenceRunner (llm.RubricRollout), and takes the max again.

    The category is the embedding scorer's nearest category description (free: the embeddings exist); without
    it, `Categorise` fills it in after routing, for the documents that need one. Scorers load inside `run`,
    once per task, so the step pickles cheaply for remote executors.
    """

    name = "🛡 score harm"
    type = "🔢 - SCORER"

    def __init__(self, scorer_dir: str, chunk_words: int, batch_docs: int = 64, kinds: Sequence[str] = ("embedding",),
                 settings: ScorerConfig | None = None):
        super().__init__()
        self.scorer_dir = scorer_dir
        self.chunk_words = chunk_words
        self.batch_docs = batch_docs
        self.kinds = in_process(list(kinds))
        self.settings = settings or ScorerConfig()

    def _scorers(self) -> dict:
        return {k: SCORERS[k].build(self.settings, Path(self.scorer_dir)) for k in self.kinds}

    def _flush(self, batch: list[Document]) -> DocumentsPipeline:
        scorers = self.loaded
        texts = [d.text for d in batch]
        per_scorer = {k: score_documents(s, texts, self.chunk_words) for k, s in scorers.items()}
        for i, doc in enumerate(batch):
            results = {k: r[i] for k, r in per_scorer.items()}
            chunks = [max(c) for c in zip(*(r["chunk_scores"] for r in results.values()))] or \
                [0] * len(chunk_text(doc.text, self.chunk_words))
            doc.metadata.update(harm_score=max(chunks), chunk_scores=chunks,
                                scores_by={k: r["score"] for k, r in results.items()})
            self.stat_update(f"score_{max(chunks)}")
        if "embedding" in scorers:  # its embeddings are already here: the category costs nothing
            cats = nearest_categories(np.stack([r["embedding"] for r in per_scorer["embedding"]]))
            for doc, cat in zip(batch, cats):
                doc.metadata.setdefault("category", cat)
        yield from batch

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        self.loaded = self._scorers()
        yield from super().run(data, rank, world_size)
        for name, scorer in self.loaded.items():  # chunks cut to the classifier's window (hf_classifier)
            if getattr(scorer, "truncated", 0):
                self.stat_update(f"{name}_truncated_chunks", value=scorer.truncated)


def is_val(doc_id: str, fraction: float) -> bool:
    """Held-out membership by hash of the id: stable across runs, executors and task counts."""
    h = int.from_bytes(hashlib.sha256(doc_id.encode()).digest()[:8], "little") / 2**64
    return h < fraction


KEEP = ("source", "harm_score", "category", "truth", "routed_score")


def derived(doc: Document, stream: str, text: str, **meta) -> Document:
    """A document of `stream` made from a routed one: id `<source id>:<stream>`, the routing metadata kept."""
    source_id = doc.metadata.get("source_id", doc.id)
    keep = {k: doc.metadata[k] for k in KEEP if k in doc.metadata}
    return Document(text=text, id=f"{source_id}:{stream}", metadata={**keep, "stream": stream, **meta})


class RouteDocuments(PipelineStep):
    """The routing policy: each scored document goes to exactly one of `safe`, `val` (a held-out slice of
    score-0 documents) or `unsafe` (score >= 1, untouched; only the raw arm reads it). An `unsafe` document
    carries what the intervention steps need: `routed_score`, `routed_chunk_scores`, `source_id`, `subject`.
    """

    name = "🔀 route"
    type = "✂️ - INTERVENTION"

    def __init__(self, cfg: DataConfig, val_fraction: float, seed: int):
        super().__init__()
        self.cfg = cfg
        self.val_fraction = val_fraction
        self.seed = seed

    def _routing_score(self, doc: Document) -> tuple[int, list[int]]:
        """(document score, chunk scores) that routing uses: the scorer's, or the truth label with the
        configured error rate (`routing.by: truth`). Chunk scores stay the scorer's, so a rephrase still keeps
        the chunks the scorer found safe; when the scorer flagged none, all are flagged."""
        scored, chunks = doc.metadata["harm_score"], list(doc.metadata["chunk_scores"])
        routing = self.cfg.routing
        if routing.by == "scorer":
            return scored, chunks
        truth = doc.metadata.get("truth")
        if truth is None:
            raise ValueError(f"document {doc.id} has no truth label but data.routing.by=truth")
        rng = iv.doc_rng(doc.id, self.seed, "truth-error")
        if rng.random() < routing.truth_error_rate:
            truth = 0 if truth > 0 else rng.randint(1, 5)
            self.stat_update("truth_label_flipped")
        if truth == 0:
            return 0, [0] * len(chunks)
        if max(chunks) == 0:  # the scorer found nothing: every chunk is treated as flagged (nothing unsafe kept)
            chunks = [truth] * len(chunks)
        return truth, chunks

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        for doc in data:
            score, chunk_scores = self._routing_score(doc)
            doc.metadata["routed_score"] = score
            if score == 0:
                stream = "val" if is_val(doc.id, self.val_fraction) else "safe"
            else:
                stream = "unsafe"
            out = derived(doc, stream, doc.text)
            if score:
                out.metadata.update(source_id=doc.id, routed_chunk_scores=chunk_scores,
                                    **{k: doc.metadata[k] for k in ("subject",) if k in doc.metadata})
            self.stat_update(f"stream_{stream}")
            yield out


class Categorise(BatchedStep):
    """Name the harm category of each `unsafe` document that has none (no embedding scorer, or a false alarm
    of truth routing): the bundled MiniLM embeds its worst chunk, nearest category description wins."""

    name = "🗂 categorise"
    type = "✂️ - INTERVENTION"

    def __init__(self, chunk_words: int, batch_docs: int = 64):
        super().__init__()
        self.chunk_words = chunk_words
        self.batch_docs = batch_docs

    def _flush(self, batch: list[Document]) -> DocumentsPipeline:
        todo = [d for d in batch if d.metadata.get("stream") == "unsafe" and d.metadata.get("category") is None]
        if todo:
            worst = []
            for d in todo:
                chunks, scores = chunk_text(d.text, self.chunk_words), d.metadata["routed_chunk_scores"]
                worst.append(chunks[max(range(len(chunks)), key=lambda i: scores[i] if i < len(scores) else 0)])
            for d, cat in zip(todo, nearest_categories(embed(worst))):
                d.metadata["category"] = cat
                self.stat_update("categorised")
        yield from batch


class Intervention(BatchedStep):
    """Passes every document through; after each `unsafe` document whose routed score is in `scores`
    (inclusive), emits what `make` writes from it (work is done in batches of `batch_docs`)."""

    type = "✂️ - INTERVENTION"
    stream = ""

    def __init__(self, scores: tuple[int, int], seed: int, batch_docs: int = 64):
        super().__init__()
        self.scores = tuple(scores)
        self.seed = seed
        self.batch_docs = batch_docs

    def applies(self, doc: Document) -> bool:
        lo, hi = self.scores
        return doc.metadata.get("stream") == "unsafe" and lo <= doc.metadata["routed_score"] <= hi

    def make(self, docs: list[Document]) -> list[tuple[str, dict]]:
        """(text, extra metadata) for each document of the batch."""
        raise NotImplementedError

    def _flush(self, batch: list[Document]) -> DocumentsPipeline:
        targets = [d for d in batch if self.applies(d)]
        made = iter(self.make(targets)) if targets else iter(())
        for doc in batch:
            yield doc
            if self.applies(doc):
                text, meta = next(made)
                self.stat_update(f"stream_{self.stream}")
                yield derived(doc, self.stream, text, **meta)


class StreamReader(JsonlReader):
    """Reads a stream folder that may hold nothing (no document was routed there, or the LLM rejected every
    dialogue a moral-education pass would read): the pass then has no input and finishes, instead of failing
    with datatrove's `No files found`."""

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        if data:
            yield from data
        if self.data_folder.list_files(glob_pattern=self.glob_pattern, recursive=self.recursive):
            yield from super().run(None, rank, world_size)


class SelectRouted(PipelineStep):
    """Keeps the `unsafe` documents whose routed score is in `scores` (the input of an LLM generation pass)."""

    name = "🎯 select routed"
    type = "🔻 - FILTER"

    def __init__(self, scores: tuple[int, int]):
        super().__init__()
        self.scores = tuple(scores)

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        lo, hi = self.scores
        for doc in data:
            if doc.metadata.get("stream") == "unsafe" and lo <= doc.metadata["routed_score"] <= hi:
                self.stat_update("selected")
                yield doc


def routed_view(doc: Document, chunk_words: int) -> iv.Routed:
    m = doc.metadata
    return iv.Routed(m["source_id"], doc.text, m["routed_score"], m["routed_chunk_scores"],
                     chunk_text(doc.text, chunk_words), m["category"], m.get("subject"))


class TagUnsafe(Intervention):
    """`tagged`: unsafe text that gets the harmfulness tag before each word with probability p (paper Alg. 2).

    The tags go in when the stream is encoded, as ids (pipeline.encode_stream, TextTokenizer.encode_tagged): the
    stored text is the untagged text with the `source_id` and `tag_probability` that fix the draws, and
    `iv.tagged_text` on a record gives the tagged text, the same one the ids encode."""

    name = "🏷 tag unsafe"
    stream = "tagged"

    def __init__(self, tag: str, probability: float, min_score: int, seed: int):
        super().__init__((min_score, 5), seed)
        self.tag, self.probability = tag, probability

    def make(self, docs):
        return [(d.text, {"source_id": d.metadata["source_id"], "tag_probability": self.probability}) for d in docs]


class Rephrase(Intervention):
    """`rephrased` (SafeWeb), template generator: see interventions.rephrase."""

    name = "📝 rephrase"
    stream = "rephrased"

    def __init__(self, scores: tuple[int, int], chunk_words: int, seed: int):
        super().__init__(scores, seed)
        self.chunk_words = chunk_words

    def make(self, docs):
        return [(text, {"style": style}) for text, style in
                (iv.rephrase(routed_view(d, self.chunk_words), self.seed) for d in docs)]


class RefusalDialogue(Rephrase):
    """`refusal` (RefuseWeb), template generator: see interventions.refusal_dialogue."""

    name = "🙅 refusal dialogue"
    stream = "refusal"

    def make(self, docs):
        return [(iv.refusal_dialogue(routed_view(d, self.chunk_words), self.seed)[0], {}) for d in docs]


class MoralEducation(Rephrase):
    """`moral_ed`, template generator: see interventions.moral_education."""

    name = "📚 moral education"
    stream = "moral_ed"

    def make(self, docs):
        return [(iv.moral_education(routed_view(d, self.chunk_words), self.seed), {}) for d in docs]


def route_and_intervene(cfg: DataConfig, val_fraction: float, seed: int, generate: bool = True) -> list:
    """RouteDocuments and the intervention steps of `cfg`. `generate=False` leaves out the three generators
    (the `llm` generator runs them as InferenceRunner passes instead)."""
    routing, icfg = cfg.routing, cfg.interventions
    steps = [RouteDocuments(cfg, val_fraction, seed), Categorise(cfg.scorer.chunk_words),
             TagUnsafe(icfg.tag, icfg.tag_probability, routing.tag_min_score, seed)]
    if generate:
        steps += [Rephrase(routing.rephrase_scores, cfg.scorer.chunk_words, seed),
                  RefusalDialogue(routing.refusal_scores, cfg.scorer.chunk_words, seed)]
        if icfg.moral_education:
            steps.append(MoralEducation(routing.refusal_scores, cfg.scorer.chunk_words, seed))
    return steps
