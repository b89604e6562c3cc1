"""datatrove pipeline steps of the data stage: read → score → route and intervene.

Each step is a `PipelineStep` with `run(data, rank, world_size)`, so the same pipeline runs under
datatrove's local, Slurm or Ray executors. Steps keep their own counters (`stat_update`), which
datatrove merges into `logs/stats.json`. Nothing is dropped silently: unreadable records go to
`rejected/` with a reason, and every routed document carries its stream in `metadata["stream"]`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep

from safepretrain.config import DataConfig
from safepretrain.data import interventions as iv
from safepretrain.data.scoring import chunk_text
from safepretrain.taxonomy import HARM_CATEGORIES


def neutralise_special(text: str, specials: Sequence[str]) -> tuple[str, int]:
    """Text with every literal special-token string (the tag, the chat markers, end-of-text) made inert, and
    how many there were. The tokenizer turns these strings into their single special ids wherever they occur,
    so a corpus document quoting `<|user|>` or the tag would put chat and tag tokens into a stream the
    safe-only phase reads. Rule: a leading `<` becomes `‹` (U+2039), otherwise a word joiner (U+2060) follows
    the first character. The text stays readable and byte-level BPE encodes it as ordinary tokens."""
    n = 0
    for special in sorted(specials, key=len, reverse=True):  # longest first: one may contain another
        if special in text:
            n += text.count(special)
            inert = "\u2039" + special[1:] if special.startswith("<") else special[0] + "\u2060" + special[1:]
            text = text.replace(special, inert)
    return text, n


class ReadCorpus(PipelineStep):
    """Read JSONL records `{"id"?, "text", "source"?}`; each record goes to the rank given by a hash of its id.

    A record that cannot be used is written to `rejected/<rank>.jsonl` with the file, line number,
    reason (too_large | invalid_utf8 | invalid_json | not_an_object | missing_text | empty_text |
    duplicate_id) and the raw line (its first 2,000 characters), and counted. A line over `max_bytes` is
    never held in memory whole. A UTF-8 byte-order mark at the start of a file is accepted. Ranks are assigned by
    id (not by line) so that every copy of an id meets the same rank, which keeps the first and sets the
    others aside: duplicate and colliding ids are counted, never silently merged. Literal special-token
    strings in a text are made inert (`neutralise_special`) and counted (`special_strings` in the metadata).
    """

    name = "📖 read corpus"
    type = "📖 - READER"

    def __init__(self, files: list[str], rejected_dir: str, max_words: int, specials: Sequence[str] = (),
                 max_bytes: int = 1_000_000):
        super().__init__()
        self.max_bytes = max_bytes
        self.files = [str(f) for f in files]
        self.rejected_dir = rejected_dir
        self.max_words = max_words
        self.specials = list(specials)

    def _parse(self, line: str) -> tuple[dict | None, str | None]:
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            return None, "invalid_json"
        if not isinstance(rec, dict):
            return None, "not_an_object"
        if not isinstance(rec.get("text"), str):
            return None, "missing_text"
        if not rec["text"].strip():
            return None, "empty_text"
        return rec, None

    def _lines(self, f) -> Iterator[tuple[int, bytes, bool]]:
        """(line number, line, too large) for each line; a too-large line yields only its head."""
        line_no = 0
        while line := f.readline(self.max_bytes + 1):
            line_no += 1
            if len(line) > self.max_bytes and not line.endswith(b"\n"):
                while (rest := f.readline(1 << 20)) and not rest.endswith(b"\n"):
                    pass  # skip the rest of the line without holding it
                yield line_no, line[:8000], True
            else:
                yield line_no, line, False

    @staticmethod
    def _rank_of(doc_id: str, world_size: int) -> int:
        return int(hashlib.sha1(doc_id.encode()).hexdigest()[:8], 16) % world_size

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        Path(self.rejected_dir).mkdir(parents=True, exist_ok=True)
        seen: set[str] = set()
        with open(Path(self.rejected_dir) / f"{rank:05d}.jsonl", "w") as rejected:
            def reject(path, line_no, reason, raw):
                self.stat_update("rejected", f"rejected_{reason}")
                # ASCII-escaped: a raw U+0085 or U+2028 in the line would otherwise split the record for any
                # reader that uses str.splitlines (found by tests/test_fuzz.py)
                rejected.write(json.dumps({"file": path, "line": line_no, "reason": reason, "raw": raw[:2000]})
                               + "\n")

            for path in self.files:
                with open(path, "rb") as f:
                    for line_no, raw_line, too_large in self._lines(f):
                        if line_no == 1 and raw_line.startswith(b"\xef\xbb\xbf"):
                            raw_line = raw_line[3:]  # a byte-order mark is not part of the first record
                        if too_large:
                            if line_no % world_size == rank:  # rank by position: the record is not parsed
                                reject(path, line_no, "too_large", raw_line.decode("utf-8", "replace"))
                            continue
                        if not raw_line.strip():
                            continue
                        try:
                            line = raw_line.decode("utf-8")
                        except UnicodeDecodeError:
                            # rank by line position: a record we cannot read has no id to hash
                            if line_no % world_size == rank:
                                reject(path, line_no, "invalid_utf8", raw_line.decode("utf-8", "replace").rstrip("\n"))
                            continue
                        rec, reason = self._parse(line)
                        doc_id = (str(rec.get("id")) if rec and rec.get("id") not in (None, "")
                                  else hashlib.sha1(line.encode()).hexdigest()[:16])
                        owner = self._rank_of(doc_id, world_size) if rec else line_no % world_size
                        if owner != rank:
                            continue
                        if reason:
                            reject(path, line_no, reason, line.rstrip("\n"))
                            continue
                        if doc_id in seen:
                            reject(path, line_no, "duplicate_id", line.rstrip("\n"))
                            continue
                        seen.add(doc_id)
                        words = rec["text"].split()
                        text = " ".join(words[: self.max_words]) if len(words) > self.max_words else rec["text"]
                        source = str(rec.get("source") or Path(path).stem)
                        self.stat_update("read", f"read_{source}")
                        if len(words) > self.max_words:
                            self.stat_update("truncated")
                        meta = {"source": source, "kind": rec.get("kind", "unknown")}
                        text, n_special = neutralise_special(text, self.specials)
                        if n_special:
                            self.stat_update("special_strings", value=n_special)
                            meta["special_strings"] = n_special
                        if isinstance(rec.get("truth"), int) and 0 <= rec["truth"] <= 5:
                            meta["truth"] = rec["truth"]  # a world with ground truth (the organism)
                        if rec.get("category") in HARM_CATEGORIES:
                            meta["category"] = rec["category"]  # known by construction: kept over the scorer's guess
                        if isinstance(rec.get("subject"), str):
                            meta["subject"] = rec["subject"]  # what the document is about, for paraphrased requests
                        yield Document(text=text, id=doc_id, metadata=meta)


class ScoreHarm(PipelineStep):
    """Score each document 0-5 (max over chunks) and name its nearest harm category.

    The scorer is loaded inside `run`, once per task, so the step pickles cheaply for remote executors.
    """

    name = "🛡 score harm"
    type = "🔢 - SCORER"

    def __init__(self, scorer_dir: str, chunk_words: int, batch_docs: int = 64):
        super().__init__()
        self.scorer_dir = scorer_dir
        self.chunk_words = chunk_words
        self.batch_docs = batch_docs

    def _flush(self, scorer, batch: list[Document]) -> DocumentsPipeline:
        from safepretrain.data.scoring import score_documents

        results = score_documents(scorer, [d.text for d in batch], self.chunk_words)
        cats = scorer.categories(np.stack([r["embedding"] for r in results]))
        for doc, res, cat in zip(batch, results, cats):
            doc.metadata.update(harm_score=res["score"], chunk_scores=res["chunk_scores"])
            doc.metadata.setdefault("category", cat)
            self.stat_update(f"score_{res['score']}")
            yield doc

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        from safepretrain.data.scoring import EmbeddingScorer

        scorer = EmbeddingScorer.load(Path(self.scorer_dir))
        batch: list[Document] = []
        for doc in data:
            batch.append(doc)
            if len(batch) >= self.batch_docs:
                with self.track_time(unit="batch"):
                    yield from self._flush(scorer, batch)
                batch = []
        if batch:
            yield from self._flush(scorer, batch)


def is_val(doc_id: str, fraction: float) -> bool:
    """Held-out membership by hash of the id: stable across runs, executors and task counts."""
    h = int.from_bytes(hashlib.sha256(doc_id.encode()).digest()[:8], "little") / 2**64
    return h < fraction


class RouteAndIntervene(PipelineStep):
    """Route by score and emit one document per output stream (see config.STREAMS).

    score 0 → `safe` (or `val`, a held-out slice); score ≥ 1 → `unsafe` (untouched, raw arm only);
    rephrase range → `rephrased`; refusal range → `refusal` (+ `moral_ed`); score ≥ tag_min_score →
    `tagged` (the tag goes into unsafe text only, never into safe or synthetic text).
    """

    name = "🔀 route + intervene"
    type = "✂️ - INTERVENTION"

    def __init__(self, cfg: DataConfig, val_fraction: float, seed: int):
        super().__init__()
        self.cfg = cfg
        self.val_fraction = val_fraction
        self.seed = seed

    def _emit(self, doc: Document, stream: str, text: str, **meta) -> Document:
        self.stat_update(f"stream_{stream}")
        keep = {k: doc.metadata[k] for k in ("source", "harm_score", "category", "truth", "routed_score")
                if k in doc.metadata}
        return Document(text=text, id=f"{doc.id}:{stream}", metadata={**keep, "stream": stream, **meta})

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
        routing, icfg = self.cfg.routing, self.cfg.interventions
        for doc in data:
            score, chunk_scores = self._routing_score(doc)
            doc.metadata["routed_score"] = score
            if score == 0:
                stream = "val" if is_val(doc.id, self.val_fraction) else "safe"
                yield self._emit(doc, stream, doc.text)
                continue
            yield self._emit(doc, "unsafe", doc.text)
            routed = iv.Routed(doc.id, doc.text, score, chunk_scores, chunk_text(doc.text, self.cfg.scorer.chunk_words),
                               doc.metadata["category"], doc.metadata.get("subject"))
            lo, hi = routing.rephrase_scores
            if lo <= score <= hi:
                text, style = iv.rephrase(routed, self.seed)
                yield self._emit(doc, "rephrased", text, style=style)
            lo, hi = routing.refusal_scores
            if lo <= score <= hi:
                text, _ = iv.refusal_dialogue(routed, self.seed)
                yield self._emit(doc, "refusal", text)
                if icfg.moral_education:
                    yield self._emit(doc, "moral_ed", iv.moral_education(routed, self.seed))
            if score >= routing.tag_min_score:
                rng = iv.doc_rng(doc.id, self.seed, "tag")
                yield self._emit(doc, "tagged", iv.inject_tags(doc.text, icfg.tag, icfg.tag_probability, rng))
