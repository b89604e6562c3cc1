"""Corpus readers of the data stage: JSON lines (plain or gzip), parquet, `datasets` folders and the HF hub.

Every input is turned into the same stream of raw records (`iter_raw_records`; the record layer is
`records.py`), so every format goes through one validation, one id rule, one rank-by-id rule and one duplicate
check (`ReadCorpus`). An input is one of

| input                               | read with                                                        |
|-------------------------------------|------------------------------------------------------------------|
| `x.jsonl`, `x.json` (JSON lines)    | line by line; a line over `max_bytes` is never held whole        |
| `x.jsonl.gz`, `x.json.gz`           | the same, through gzip                                           |
| `x.parquet`                         | `pyarrow.parquet.ParquetFile.iter_batches` (never loaded whole)  |
| a `Dataset.save_to_disk` folder     | `datasets.load_from_disk` (memory-mapped)                        |
| a `DatasetDict.save_to_disk` folder | every split in order, or one: `FOLDER@SPLIT`                     |
| `hf:NAME[/CONFIG]@SPLIT`            | `datasets.load_dataset(NAME, CONFIG, split=SPLIT, streaming=True)` |

`NAME` of an `hf:` input is a hub repo id: `owner/name` (or a bare `name`); a third part is the config, e.g.
`hf:allenai/c4/en@train`.
"""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq

from safepretrain.config.inputs import (
    GZIP_SUFFIXES,
    HF_PREFIX,
    JSONL_SUFFIXES,
    PARQUET_SUFFIXES,
    input_kind,
    parse_hf_spec,
    split_folder_spec,
)
from safepretrain.data.records import (  # noqa: F401  (re-exported: the reader's public record layer)
    META_KEYS,
    RAW_HEAD_CHARS,
    REJECT_REASONS,
    RawRecord,
    corrupt_record,
    raw_head,
    record_id,
    row_json,
    rows_to_records,
    validate_record,
    wanted_columns,
)

BATCH_ROWS = 256  # rows per parquet / datasets batch

# reading errors of a damaged local file: truncated or corrupt gzip, unreadable parquet or arrow data
_GZIP_ERRORS = (OSError, EOFError, zlib.error)


def check_inputs(specs: Iterable[str]) -> None:
    """Raise (FileNotFoundError / ValueError, see `input_kind`) for the first input that cannot be read; run
    before any work. `hf:` inputs are only parsed: the hub is not asked."""
    for spec in specs:
        input_kind(str(spec))


def corpus_problems(specs: Sequence[str], field: str = "world.corpus") -> list[str]:
    """One line per input that cannot be read (`world.corpus.<i>: ...`), for checks run before any work."""
    problems = []
    for i, spec in enumerate(specs):
        try:
            input_kind(str(spec))
        except (FileNotFoundError, ValueError) as err:
            problems.append(f"{field}.{i}: {err}")
    return problems


def source_name(spec: str) -> str:
    """Default `source` of an input's records (a record's own `source` field wins): the file name without
    its format extension, the folder name, or the hub dataset's name."""
    if spec.startswith(HF_PREFIX):
        return parse_hf_spec(spec).name.rsplit("/", 1)[-1]
    path = Path(split_folder_spec(spec)[0])
    name = path.name
    for suffix in GZIP_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem if path.suffix.lower() in (*JSONL_SUFFIXES, *PARQUET_SUFFIXES) else name


def _lines(f, max_bytes: int) -> Iterator[tuple[int, bytes, bool]]:
    """(line number, line, too large) for each line; a too-large line yields only its head."""
    line_no = 0
    while line := f.readline(max_bytes + 1):
        line_no += 1
        if len(line) > max_bytes and not line.endswith(b"\n"):
            while (rest := f.readline(1 << 20)) and not rest.endswith(b"\n"):
                pass  # skip the rest of the line without holding it
            yield line_no, line[:8000], True
        else:
            yield line_no, line, False


def _jsonl_records(spec: str, max_bytes: int, text_key: str, id_key: str, gz: bool) -> Iterator[RawRecord]:
    """JSON lines: blank lines are skipped; a UTF-8 byte-order mark opening the file is not part of the first
    record. A damaged gzip stream ends the file with one `corrupt_file` record (the lines before it stand)."""
    with (gzip.open(spec, "rb") if gz else open(spec, "rb")) as f:
        lines, line_no = _lines(f, max_bytes), 0
        while True:
            try:
                line_no, raw_line, too_large = next(lines)
            except StopIteration:
                return
            except _GZIP_ERRORS as err:
                yield corrupt_record(line_no + 1, err)
                return
            if line_no == 1 and raw_line.startswith(b"\xef\xbb\xbf"):
                raw_line = raw_line[3:]  # a byte-order mark is not part of the first record
            if too_large:  # the record is not parsed
                yield RawRecord(line_no, None, "too_large", raw_line.decode("utf-8", "replace"), None)
                continue
            if not raw_line.strip():
                continue
            try:
                line = raw_line.decode("utf-8")
            except UnicodeDecodeError:
                yield RawRecord(line_no, None, "invalid_utf8", raw_line.decode("utf-8", "replace").rstrip("\n"), None)
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                yield RawRecord(line_no, None, "invalid_json", line.rstrip("\n"), None)
                continue
            if reason := validate_record(obj, text_key):
                yield RawRecord(line_no, None, reason, line.rstrip("\n"), None)
                continue
            yield RawRecord(line_no, obj, None, line.rstrip("\n"), record_id(obj, id_key, line))


def _read_rows(batches: Iterator, to_rows, failure: list[BaseException]) -> Iterator[dict]:
    """Rows of each batch of a local file. A reading error ends the rows and is put in `failure` (the caller
    then adds one `corrupt_file` record). Only the reading is guarded, never the mapping of rows."""

    while True:
        try:
            rows = to_rows(next(batches))
        except StopIteration:
            return
        except (OSError, EOFError, ValueError, KeyError, pa.ArrowException) as err:  # ArrowInvalid, bad UTF-8
            failure.append(err)
            return
        yield from rows


def _guarded_records(batches: Iterator, to_rows, max_bytes: int, text_key: str,
                     id_key: str) -> Iterator[RawRecord]:
    """`rows_to_records` of a local columnar file, with a `corrupt_file` record after the last good row when
    the file is damaged."""
    failure: list[BaseException] = []
    last = 0
    for rec in rows_to_records(_read_rows(batches, to_rows, failure), max_bytes, text_key, id_key):
        last = rec.number
        yield rec
    if failure:
        yield corrupt_record(last + 1, failure[0])


def _parquet_records(spec: str, max_bytes: int, text_key: str, id_key: str) -> Iterator[RawRecord]:

    try:
        pf = pq.ParquetFile(spec)
        names = pf.schema_arrow.names
        columns = [c for c in wanted_columns(text_key, id_key) if c in names] or names[:1]  # [:1]: count rows
        # one row group at a time: a damaged row group then costs only itself and the ones after it
        batches = (batch for group in range(pf.num_row_groups)
                   for batch in pf.iter_batches(batch_size=BATCH_ROWS, row_groups=[group], columns=columns,
                                                use_threads=False))
    except (OSError, EOFError, ValueError, pa.ArrowException) as err:
        yield corrupt_record(1, err)
        return
    yield from _guarded_records(batches, lambda b: b.to_pylist(), max_bytes, text_key, id_key)


def _dataset_batches(ds, text_key: str, id_key: str) -> Iterator[dict]:
    """Batches (dicts of columns) of a `datasets.Dataset`, only the wanted columns, as plain Python values."""
    keep = [c for c in wanted_columns(text_key, id_key) if c in ds.column_names]
    ds = ds.select_columns(keep).with_format(None) if keep else ds.with_format(None)
    return iter(ds.iter(batch_size=BATCH_ROWS))


def _columns_to_rows(batch: dict) -> list[dict]:
    keys = list(batch)
    return [dict(zip(keys, values)) for values in zip(*batch.values())]


def _dataset_records(spec: str, max_bytes: int, text_key: str, id_key: str) -> Iterator[tuple[str, RawRecord]]:
    """(label, record) of a save_to_disk folder; a DatasetDict gives every split (label `FOLDER@SPLIT`)."""

    folder, split = split_folder_spec(spec)
    try:
        loaded = datasets.load_from_disk(folder)
    except (OSError, EOFError, ValueError, KeyError, pa.ArrowException) as err:
        yield spec, corrupt_record(1, err)
        return
    if isinstance(loaded, datasets.DatasetDict):
        parts = [(f"{folder}@{name}", loaded[name]) for name in ([split] if split else list(loaded))]
    else:
        parts = [(spec, loaded)]
    for label, ds in parts:
        batches = _dataset_batches(ds, text_key, id_key)
        for rec in _guarded_records(batches, _columns_to_rows, max_bytes, text_key, id_key):
            yield label, rec


def load_hf_stream(spec: str):
    """The `datasets.IterableDataset` of an `hf:` input (streamed: nothing is downloaded whole)."""

    hf = parse_hf_spec(spec)
    return datasets.load_dataset(hf.name, hf.config, split=hf.split, streaming=True)


def _hf_records(spec: str, max_bytes: int, text_key: str, id_key: str) -> Iterator[RawRecord]:
    """Rows of a hub stream. Errors of the hub (network, missing dataset) are raised, not set aside: a
    transient failure must not silently shorten the corpus."""
    stream = load_hf_stream(spec)
    names = getattr(stream, "column_names", None)
    if names:
        keep = [c for c in wanted_columns(text_key, id_key) if c in names]
        if keep:
            stream = stream.select_columns(keep)
    yield from rows_to_records(iter(stream), max_bytes, text_key, id_key)


def iter_labelled_records(spec: str, max_bytes: int = 1_000_000, text_key: str = "text",
                          id_key: str = "id") -> Iterator[tuple[str, RawRecord]]:
    """(label, record) for every record of an input; the label names the file (or `FOLDER@SPLIT`) in
    `rejected/`. Raises like `input_kind` for an input that cannot be read at all."""
    spec = str(spec)
    kind = input_kind(spec)
    if kind == "dataset":
        yield from _dataset_records(spec, max_bytes, text_key, id_key)
        return
    if kind in ("jsonl", "jsonl.gz"):
        records = _jsonl_records(spec, max_bytes, text_key, id_key, gz=kind == "jsonl.gz")
    elif kind == "parquet":
        records = _parquet_records(spec, max_bytes, text_key, id_key)
    else:
        records = _hf_records(spec, max_bytes, text_key, id_key)
    for rec in records:
        yield spec, rec


def iter_raw_records(spec: str, max_bytes: int = 1_000_000, text_key: str = "text",
                     id_key: str = "id") -> Iterator[RawRecord]:
    """Every record of one input (any format above) as a `RawRecord`
    `(number, record | None, reason | None, raw, id | None)`, validated the same way for every format."""
    for _, rec in iter_labelled_records(spec, max_bytes, text_key, id_key):
        yield rec
