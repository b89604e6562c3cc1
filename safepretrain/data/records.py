"""Corpus records before they become documents: the one validation, id rule and reject format that every
input format of `readers.py` shares; and the documents of a finished stream (`read_stream`)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import NamedTuple

from safepretrain.utils import read_jsonl

META_KEYS = ("source", "kind", "truth", "category", "subject")
"""Record fields besides the text and the id that reach a document's metadata."""
REJECT_REASONS = ("too_large", "invalid_utf8", "invalid_json", "not_an_object", "missing_text", "empty_text",
                  "duplicate_id", "corrupt_file")
RAW_HEAD_CHARS = 2000


class RawRecord(NamedTuple):
    """One record of an input. `record` is the usable record (None when rejected) and `reason` the reject
    reason (None when usable); `raw` is the record as read (a JSONL line, or a row as JSON with long strings
    cut), for `rejected/`; `id` the document id (None when rejected)."""

    number: int  # 1-based line number (JSON lines) or row number (parquet, datasets)
    record: dict | None
    reason: str | None
    raw: str
    id: str | None


def validate_record(obj: object, text_key: str = "text") -> str | None:
    """Reject reason of a parsed record, or None: it must be an object with a non-blank string text."""
    if not isinstance(obj, dict):
        return "not_an_object"
    if not isinstance(obj.get(text_key), str):
        return "missing_text"
    if not obj[text_key].strip():
        return "empty_text"
    return None


def record_id(rec: dict, id_key: str, content: str) -> str:
    """The record's own id as a string, or (none, or empty) the first 16 hex digits of the sha1 of `content`:
    the JSONL line as read (with its newline), or `row_json` of a parquet / datasets row. Identical records
    without an id thus share an id and the second is a duplicate."""
    own = rec.get(id_key)
    return str(own) if own not in (None, "") else hashlib.sha1(content.encode()).hexdigest()[:16]


def row_json(row: dict) -> str:
    """Canonical JSON of a parquet / datasets row (keys sorted, ASCII): the content an id-less row is hashed by."""
    return json.dumps(row, sort_keys=True, default=str)


def raw_head(row: dict) -> str:
    """A row as JSON for `rejected/`, long strings cut first so a huge text is never serialised whole."""
    cut = {k: v[:RAW_HEAD_CHARS] if isinstance(v, str | bytes) else v for k, v in row.items()}
    return json.dumps(cut, ensure_ascii=False, default=str)[:RAW_HEAD_CHARS]


def corrupt_record(number: int, err: BaseException) -> RawRecord:
    return RawRecord(number, None, "corrupt_file", f"{type(err).__name__}: {err}"[:RAW_HEAD_CHARS], None)


def wanted_columns(text_key: str, id_key: str) -> list[str]:
    """The fields a reader takes from a row: text, id and the metadata fields (others are never loaded)."""
    return list(dict.fromkeys([text_key, id_key, *META_KEYS]))


def rows_to_records(rows: Iterable[dict], max_bytes: int, text_key: str = "text",
                    id_key: str = "id") -> Iterator[RawRecord]:
    """Rows (dicts) of a parquet file, a datasets folder or a hub stream → raw records: the one mapping every
    columnar format shares. A null field counts as absent (so a null text is `missing_text` and a null id gets a
    content id); a text over `max_bytes` UTF-8 bytes is `too_large`. Rows are numbered from 1."""
    wanted = wanted_columns(text_key, id_key)
    number = 0
    for full in rows:
        number += 1
        row = {k: full[k] for k in wanted if full.get(k) is not None}
        text = row.get(text_key)
        if isinstance(text, str) and len(text) > max_bytes // 4 and len(text.encode("utf-8", "replace")) > max_bytes:
            yield RawRecord(number, None, "too_large", raw_head(row), None)
        elif reason := validate_record(row, text_key):
            yield RawRecord(number, None, reason, raw_head(row), None)
        else:
            yield RawRecord(number, row, None, raw_head(row), record_id(row, id_key, row_json(row)))


def read_stream(folder: Path, stream: str) -> list[dict]:
    """Documents of one stream, in rank order (deterministic for a given task count)."""
    return [r for p in sorted((folder / "streams" / stream).glob("*.jsonl.gz")) for r in read_jsonl(p)]
