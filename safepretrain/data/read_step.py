"""`ReadCorpus`, the first step of the data stage: every record of every input, validated, ranked by id,
with malformed records set aside in `rejected/` (formats: `readers.py`)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep

from safepretrain.data.readers import RAW_HEAD_CHARS, check_inputs, iter_labelled_records, source_name
from safepretrain.world.taxonomy import HARM_CATEGORIES


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


# ------------------------------------------------------------------------------------------ input specs


def rank_of(doc_id: str, world_size: int) -> int:
    """The rank that reads a document: a hash of its id, so every copy of an id meets the same rank."""
    return int(hashlib.sha1(doc_id.encode()).hexdigest()[:8], 16) % world_size


class ReadCorpus(PipelineStep):
    """Read corpus records `{"id"?, "text", "source"?}` from any accepted input (see the module docstring);
    each record goes to the rank given by a hash of its id.

    A record that cannot be used is written to `rejected/<rank>.jsonl` with the file, line (row) number,
    reason (too_large | invalid_utf8 | invalid_json | not_an_object | missing_text | empty_text |
    duplicate_id | corrupt_file) and the raw record (its first 2,000 characters), and counted. A line over
    `max_bytes` is never held in memory whole. A UTF-8 byte-order mark at the start of a file is accepted. Ranks
    are assigned by id (not by line) so that every copy of an id meets the same rank, which keeps the first and
    sets the others aside: duplicate and colliding ids are counted, never silently merged. A record that cannot
    be read has no id and goes to the rank of its line number. A damaged gzip, parquet or datasets file gives
    one `corrupt_file` record and reading goes on with the next input, keeping the records read before it.
    Literal special-token strings in a text are made inert (`neutralise_special`) and counted
    (`special_strings` in the metadata).

    `text_key` / `id_key` name the text and id fields of every input; `input_keys` maps particular inputs to
    their own `(text_key, id_key)`. A missing or unreadable input fails at construction (`check_inputs`).
    """

    name = "📖 read corpus"
    type = "📖 - READER"

    def __init__(self, files: list[str], rejected_dir: str, max_words: int, specials: Sequence[str] = (),
                 max_bytes: int = 1_000_000, text_key: str = "text", id_key: str = "id",
                 input_keys: dict[str, tuple[str, str]] | None = None):
        super().__init__()
        self.max_bytes = max_bytes
        self.files = [str(f) for f in files]
        self.rejected_dir = rejected_dir
        self.max_words = max_words
        self.specials = list(specials)
        self.text_key = text_key
        self.id_key = id_key
        self.input_keys = {str(k): tuple(v) for k, v in (input_keys or {}).items()}
        check_inputs(self.files)

    def keys_of(self, spec: str) -> tuple[str, str]:
        """(text_key, id_key) of one input."""
        return self.input_keys.get(spec, (self.text_key, self.id_key))

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        check_inputs(self.files)  # again on the worker: the inputs may have moved since the step was built
        Path(self.rejected_dir).mkdir(parents=True, exist_ok=True)
        seen: set[str] = set()
        with open(Path(self.rejected_dir) / f"{rank:05d}.jsonl", "w") as rejected:
            def reject(label, number, reason, raw):
                self.stat_update("rejected", f"rejected_{reason}")
                # ASCII-escaped: a raw U+0085 or U+2028 in the line would otherwise split the record for any
                # reader that uses str.splitlines (found by tests/test_fuzz.py)
                rejected.write(json.dumps({"file": label, "line": number, "reason": reason,
                                           "raw": raw[:RAW_HEAD_CHARS]}) + "\n")

            for spec in self.files:
                text_key, id_key = self.keys_of(spec)
                default_source = source_name(spec)
                for label, (number, rec, reason, raw, doc_id) in iter_labelled_records(spec, self.max_bytes,
                                                                                       text_key, id_key):
                    # a record that cannot be read has no id to hash: rank by its position
                    owner = rank_of(doc_id, world_size) if rec is not None else number % world_size
                    if owner != rank:
                        continue
                    if reason:
                        reject(label, number, reason, raw)
                        continue
                    if doc_id in seen:
                        reject(label, number, "duplicate_id", raw)
                        continue
                    seen.add(doc_id)
                    yield self._document(rec, doc_id, text_key, default_source)

    def _document(self, rec: dict, doc_id: str, text_key: str, default_source: str) -> Document:
        words = rec[text_key].split()
        text = " ".join(words[: self.max_words]) if len(words) > self.max_words else rec[text_key]
        source = str(rec.get("source") or default_source)
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
        return Document(text=text, id=doc_id, metadata=meta)
