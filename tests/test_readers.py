"""Corpus formats of the data stage (safepretrain/data/readers.py): JSON lines (plain, gzip), parquet, datasets
save_to_disk folders and hub streams all give the same documents, the same rejects and the same ids.

    python -m pytest tests/test_readers.py -q
"""

import gzip
import hashlib
import json

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from safepretrain.config import WorldConfig
from safepretrain.config.inputs import HFSpec, input_kind, parse_hf_spec
from safepretrain.data import readers
from safepretrain.data.read_step import ReadCorpus
from safepretrain.data.readers import check_inputs, corpus_problems, iter_raw_records, source_name

RECORDS = [
    {"id": "a", "text": "A note about gardens and rain.", "source": "web", "kind": "article"},
    {"id": "b", "text": "Quoting <|user|> in plain text.", "truth": 0, "category": "privacy"},
    {"id": "c", "text": "word " * 30, "subject": "words", "truth": 4},
    {"id": "d", "text": "Ünïcödé text, ok ✓", "source": "other", "category": "not_a_category"},
    {"id": "e", "text": "last one"},
]
FORMATS = ["jsonl", "jsonl.gz", "parquet", "save_to_disk", "save_to_disk_dict"]


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    datasets.disable_progress_bars()


def write(tmp_path, fmt: str, records: list[dict], name: str = "corpus") -> str:
    """`records` in one format; the input spec to read them back."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    # columns: every key of every record (from_pylist / from_list would take the first record's keys only)
    columns = {k: [r.get(k) for r in records] for k in dict.fromkeys(k for r in records for k in r)}
    if fmt == "jsonl":
        path = tmp_path / f"{name}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    elif fmt == "jsonl.gz":
        path = tmp_path / f"{name}.jsonl.gz"
        path.write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in records).encode()))
    elif fmt == "parquet":
        path = tmp_path / f"{name}.parquet"
        pq.write_table(pa.table(columns), path, row_group_size=2)  # several row groups
    elif fmt == "save_to_disk":
        path = tmp_path / name
        datasets.Dataset.from_dict(columns).save_to_disk(str(path))
    elif fmt == "save_to_disk_dict":
        path = tmp_path / name
        datasets.DatasetDict({"train": datasets.Dataset.from_dict(columns)}).save_to_disk(str(path))
    else:
        raise ValueError(fmt)
    return str(path)


def read(specs, tmp_path, rank=0, world_size=1, **kwargs):
    """(documents as (text, id, metadata), rejected rows, step) of one ReadCorpus run."""
    rej = tmp_path / kwargs.pop("rejected", "rejected")
    step = ReadCorpus(list(specs), str(rej), 20, specials=["<|user|>"], **kwargs)
    docs = [(d.text, d.id, d.metadata) for d in step.run(iter([]), rank=rank, world_size=world_size)]
    rows = [json.loads(x) for x in (rej / f"{rank:05d}.jsonl").read_text().splitlines()]
    return docs, rows, step


def reasons(step) -> dict:
    return {k.removeprefix("rejected_"): v for k, v in step.stats.to_dict()["stats"].items()
            if k.startswith("rejected_")}


# ------------------------------------------------------------------------------- the same documents

def test_every_format_gives_identical_documents(tmp_path):
    expected, rows, _ = read([write(tmp_path / "jsonl", "jsonl", RECORDS)], tmp_path / "jsonl")
    assert not rows
    assert [d[1] for d in expected] == ["a", "b", "c", "d", "e"]
    assert expected[0][2] == {"source": "web", "kind": "article"}
    assert expected[1][2] == {"source": "corpus", "kind": "unknown", "truth": 0, "category": "privacy",
                              "special_strings": 1}
    assert expected[1][0] == "Quoting \u2039|user|> in plain text."
    assert expected[2][0] == " ".join(["word"] * 20)  # cut to max_words
    assert expected[2][2] == {"source": "corpus", "kind": "unknown", "truth": 4, "subject": "words"}
    assert expected[3][2] == {"source": "other", "kind": "unknown"}  # an unknown category is dropped
    for fmt in FORMATS[1:]:
        folder = tmp_path / fmt.replace(".", "_")
        docs, rows, step = read([write(folder, fmt, RECORDS)], folder)
        assert docs == expected, fmt
        assert not rows, fmt
        assert step.stats.to_dict()["stats"]["read"] == len(RECORDS)


def test_datasetdict_reads_every_split_or_one(tmp_path):
    folder = tmp_path / "dd"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(RECORDS[:3]),
                          "test": datasets.Dataset.from_list(RECORDS[3:])}).save_to_disk(str(folder))
    docs, _, _ = read([str(folder)], tmp_path)
    assert [d[1] for d in docs] == ["a", "b", "c", "d", "e"]
    docs, _, _ = read([f"{folder}@test"], tmp_path)
    assert [d[1] for d in docs] == ["d", "e"]
    assert source_name(f"{folder}@test") == "dd"
    with pytest.raises(ValueError, match="no split 'dev'.*'train', 'test'"):
        check_inputs([f"{folder}@dev"])


def test_records_shard_across_ranks_in_every_format(tmp_path):
    records = [{"id": str(i), "text": f"text {i}"} for i in range(12)] + [{"id": "3", "text": "again"}]
    for fmt in ("jsonl", "parquet", "save_to_disk"):
        folder = tmp_path / fmt
        spec = write(folder, fmt, records)
        got, dups = [], []
        for rank in range(3):
            docs, rows, _ = read([spec], folder, rank=rank, world_size=3)
            got.append([d[1] for d in docs])
            dups += [(r["line"], r["reason"]) for r in rows]
        assert sorted(sum(got, [])) == sorted(str(i) for i in range(12)), fmt  # each on exactly one rank
        assert all(got), fmt
        assert dups == [(13, "duplicate_id")], fmt  # the copy met the first on the same rank


# --------------------------------------------------------------------------------------------- ids

def test_jsonl_ids_are_unchanged_a_hash_of_the_line(tmp_path):
    f = tmp_path / "c.jsonl"
    f.write_text('{"text": "no id"}\n{"id": "", "text": "empty id"}\n{"id": 7, "text": "int id"}\n')
    docs, _, _ = read([str(f)], tmp_path)
    assert [d[1] for d in docs] == [hashlib.sha1(b'{"text": "no id"}\n').hexdigest()[:16],
                                    hashlib.sha1(b'{"id": "", "text": "empty id"}\n').hexdigest()[:16], "7"]


@pytest.mark.parametrize("fmt", ["parquet", "save_to_disk"])
def test_rows_without_an_id_get_a_content_id_and_copies_are_duplicates(tmp_path, fmt):
    records = [{"id": None, "text": "same"}, {"id": "x", "text": "other"}, {"id": None, "text": "same"}]
    docs, rows, _ = read([write(tmp_path, fmt, records)], tmp_path)
    assert [d[1] for d in docs] == [readers.record_id({"text": "same"}, "id", readers.row_json({"text": "same"})),
                                    "x"]
    assert [(r["line"], r["reason"]) for r in rows] == [(3, "duplicate_id")]


def test_custom_text_and_id_keys(tmp_path):
    records = [{"doc": "x1", "content": "first text", "text": "not this"}, {"doc": "x2", "content": "second"}]
    for fmt in ("jsonl", "parquet", "save_to_disk"):
        folder = tmp_path / fmt
        docs, rows, _ = read([write(folder, fmt, records)], folder, text_key="content", id_key="doc")
        assert [(d[0], d[1]) for d in docs] == [("first text", "x1"), ("second", "x2")], fmt
        assert not rows
    # per input: the world file keeps text/id while a user corpus names its own fields
    world = write(tmp_path, "jsonl", RECORDS[:1], name="world")
    user = write(tmp_path / "parquet", "parquet", records, name="user")
    docs, _, _ = read([world, user], tmp_path, input_keys={user: ("content", "doc")})
    assert [d[1] for d in docs] == ["a", "x1", "x2"]


# ---------------------------------------------------------------------------------------- rejects

def test_malformed_jsonl_gz_is_counted_per_reason(tmp_path):
    lines = [b'{"id": "a", "text": "fine"}', b"{not json", b"[1, 2]", b'{"id": "b"}', b'{"text": "   "}',
             b'{"id": "c", "text": "bad \xff byte"}', b'{"id": "a", "text": "again"}',
             b'{"id": "big", "text": "' + b"w " * 600 + b'"}', b"", b'{"id": "z", "text": "fine too"}']
    f = tmp_path / "c.jsonl.gz"
    f.write_bytes(gzip.compress(b"\xef\xbb\xbf" + b"\n".join(lines) + b"\n"))
    docs, rows, step = read([str(f)], tmp_path, max_bytes=1000)
    assert [d[1] for d in docs] == ["a", "z"]
    assert [(r["file"], r["line"], r["reason"]) for r in rows] == [
        (str(f), 2, "invalid_json"), (str(f), 3, "not_an_object"), (str(f), 4, "missing_text"),
        (str(f), 5, "empty_text"), (str(f), 6, "invalid_utf8"), (str(f), 7, "duplicate_id"),
        (str(f), 8, "too_large")]
    assert rows[0]["raw"] == "{not json"
    assert reasons(step) == {"invalid_json": 1, "not_an_object": 1, "missing_text": 1, "empty_text": 1,
                             "invalid_utf8": 1, "duplicate_id": 1, "too_large": 1}
    assert source_name(str(f)) == "c"


@pytest.mark.parametrize("fmt", ["parquet", "save_to_disk"])
def test_malformed_columnar_rows_are_counted_per_reason(tmp_path, fmt):
    records = [{"id": "a", "text": "fine"}, {"id": "b", "text": None}, {"id": "c", "text": "  \n "},
               {"id": "a", "text": "again"}, {"id": "big", "text": "w " * 600}, {"id": "z", "text": "fine too"}]
    spec = write(tmp_path, fmt, records)
    docs, rows, step = read([spec], tmp_path, max_bytes=1000)
    assert [d[1] for d in docs] == ["a", "z"]
    assert [(r["file"], r["line"], r["reason"]) for r in rows] == [
        (spec, 2, "missing_text"), (spec, 3, "empty_text"), (spec, 4, "duplicate_id"), (spec, 5, "too_large")]
    assert json.loads(rows[0]["raw"]) == {"id": "b"}  # a null is an absent field
    assert len(rows[3]["raw"]) <= 2000
    assert reasons(step) == {"missing_text": 1, "empty_text": 1, "duplicate_id": 1, "too_large": 1}


def test_a_non_string_text_column_is_missing_text(tmp_path):
    spec = tmp_path / "n.parquet"
    pq.write_table(pa.Table.from_pylist([{"id": "a", "text": 1}, {"id": "b", "text": 2}]), spec)
    docs, rows, _ = read([str(spec)], tmp_path)
    assert not docs and [r["reason"] for r in rows] == ["missing_text", "missing_text"]


def test_a_truncated_gzip_keeps_what_was_read_and_moves_on(tmp_path):
    records = [{"id": f"r{i}", "text": f"record {i} " + "filler " * 40} for i in range(400)]
    whole = gzip.compress("".join(json.dumps(r) + "\n" for r in records).encode(), compresslevel=1)
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(whole[: len(whole) * 3 // 4])
    garbage = tmp_path / "garbage.jsonl.gz"
    garbage.write_bytes(b"this is not gzip at all\n")
    after = write(tmp_path, "jsonl", RECORDS[:2], name="after")
    docs, rows, step = read([str(cut), str(garbage), after], tmp_path)
    ids = [d[1] for d in docs]
    n_kept = len(ids) - 2
    assert 0 < n_kept < len(records)
    assert ids[:n_kept] == [f"r{i}" for i in range(n_kept)]  # the lines before the damage stand, whole
    assert all(d[0].startswith(f"record {i} ") for i, d in enumerate(docs[:n_kept]))
    assert ids[n_kept:] == ["a", "b"]  # the next file is read
    assert [(r["file"], r["line"], r["reason"]) for r in rows] == [
        (str(cut), n_kept + 1, "corrupt_file"), (str(garbage), 1, "corrupt_file")]
    assert reasons(step) == {"corrupt_file": 2}


def test_a_corrupt_parquet_keeps_what_was_read_and_moves_on(tmp_path):
    records = [{"id": str(i), "text": f"record number {i} " + "x" * i} for i in range(40)]
    good = tmp_path / "good.parquet"
    pq.write_table(pa.Table.from_pylist(records), good, row_group_size=10, compression="gzip", use_dictionary=False)
    data = bytearray(good.read_bytes())
    column = pq.ParquetFile(good).metadata.row_group(2).column(1)  # the text of rows 21-30
    at = column.data_page_offset + column.total_compressed_size // 2
    data[at:at + 20] = b"\x00\xff" * 10
    damaged = tmp_path / "damaged.parquet"
    damaged.write_bytes(bytes(data))
    truncated = tmp_path / "truncated.parquet"
    truncated.write_bytes(good.read_bytes()[:300])
    after = write(tmp_path, "jsonl", RECORDS[:1], name="after")
    docs, rows, step = read([str(damaged), str(truncated), after], tmp_path)
    assert [d[1] for d in docs] == [str(i) for i in range(20)] + ["a"]
    assert [(r["file"], r["line"], r["reason"]) for r in rows] == [
        (str(damaged), 21, "corrupt_file"), (str(truncated), 1, "corrupt_file")]
    assert reasons(step) == {"corrupt_file": 2}


def test_a_corrupt_dataset_folder_is_corrupt_file(tmp_path):
    folder = write(tmp_path, "save_to_disk", RECORDS)
    arrow = next((tmp_path / "corpus").glob("*.arrow"))
    arrow.write_bytes(arrow.read_bytes()[:100])
    after = write(tmp_path, "jsonl", RECORDS[:1], name="after")
    docs, rows, _ = read([folder, after], tmp_path)
    assert [d[1] for d in docs] == ["a"]
    assert [(r["file"], r["reason"]) for r in rows] == [(folder, "corrupt_file")]


# ---------------------------------------------------------------------------------------- inputs

def test_a_missing_input_fails_before_any_work_naming_the_path(tmp_path):
    missing = str(tmp_path / "nope.parquet")
    with pytest.raises(FileNotFoundError, match="nope.parquet.*no such file or folder.*jsonl.gz.*parquet.*hf:"):
        check_inputs([write(tmp_path, "jsonl", RECORDS), missing])
    with pytest.raises(FileNotFoundError, match="nope.parquet"):
        ReadCorpus([missing], str(tmp_path / "rej"), 10)
    assert not (tmp_path / "rej").exists()
    assert corpus_problems([missing]) == [f"world.corpus.0: {_message(missing)}"]


def _message(spec):
    try:
        input_kind(spec)
    except (FileNotFoundError, ValueError) as err:
        return str(err)


def test_unknown_extensions_and_plain_folders_are_refused(tmp_path):
    txt = tmp_path / "c.txt"
    txt.write_text('{"text": "x"}\n')
    with pytest.raises(ValueError, match=r"c.txt.*unknown format.*\.jsonl.*\.parquet"):
        check_inputs([str(txt)])
    (tmp_path / "plain").mkdir()
    with pytest.raises(ValueError, match="not a datasets save_to_disk folder"):
        check_inputs([str(tmp_path / "plain")])
    assert input_kind(write(tmp_path, "jsonl.gz", RECORDS)) == "jsonl.gz"
    assert input_kind(write(tmp_path, "save_to_disk", RECORDS, name="ds")) == "dataset"


def test_world_config_checks_formats_and_leaves_missing_paths_to_the_start(tmp_path):
    txt = tmp_path / "c.txt"
    txt.write_text("x\n")
    with pytest.raises(ValidationError, match="entry 1: corpus input .*c.txt.*unknown format"):
        WorldConfig(corpus=[str(tmp_path / "missing.jsonl"), str(txt)])
    with pytest.raises(ValidationError, match="hf:OWNER/NAME/CONFIG@SPLIT"):
        WorldConfig(corpus=["hf:allenai/c4"])
    cfg = WorldConfig(corpus=[str(tmp_path / "later.jsonl"), "hf:allenai/c4/en@train"], corpus_text_key="content")
    assert cfg.corpus_text_key == "content" and cfg.corpus_id_key == "id"
    with pytest.raises(ValidationError):
        WorldConfig(corpus_id_key="")


# ------------------------------------------------------------------------------------------- hub

@pytest.mark.parametrize("spec, parsed", [
    ("hf:wikitext@train", HFSpec("wikitext", None, "train")),
    ("hf:allenai/c4@validation", HFSpec("allenai/c4", None, "validation")),
    ("hf:allenai/c4/en@train", HFSpec("allenai/c4", "en", "train")),
    ("hf:HuggingFaceFW/fineweb/sample-10BT@train", HFSpec("HuggingFaceFW/fineweb", "sample-10BT", "train")),
])
def test_hf_spec_parser(spec, parsed):
    assert parse_hf_spec(spec) == parsed
    assert input_kind(spec) == "hf"


@pytest.mark.parametrize("spec", ["hf:allenai/c4", "hf:@train", "hf:a/b/c/d@train", "hf:a//b@train",
                                  "hf:allenai/c4@", "hf:"])
def test_malformed_hf_specs_are_refused(spec):
    with pytest.raises(ValueError, match="hf:NAME@SPLIT"):
        check_inputs([spec])


def test_hf_stream_uses_the_save_to_disk_row_mapping(tmp_path, monkeypatch):
    calls, mapped = [], []

    def fake_load_dataset(*args, **kwargs):
        calls.append((args, kwargs))
        return datasets.load_from_disk(local_spec).to_iterable_dataset()

    real = readers.rows_to_records

    def spy(rows, *args, **kwargs):
        for rec in real(rows, *args, **kwargs):
            mapped.append(rec.id)
            yield rec

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    monkeypatch.setattr(readers, "rows_to_records", spy)
    local_spec = write(tmp_path, "save_to_disk", RECORDS)
    local, _, _ = read([local_spec], tmp_path)
    assert mapped == ["a", "b", "c", "d", "e"]  # the save_to_disk path maps rows with rows_to_records
    hub, rows, _ = read(["hf:someone/corpus/default@train"], tmp_path, rejected="rej_hf")
    assert calls == [(("someone/corpus", "default"), {"split": "train", "streaming": True})]
    assert mapped == ["a", "b", "c", "d", "e"] * 2  # ... and so does the hub path
    assert hub == local and not rows  # source "corpus": the hub dataset's name
    assert [r.number for r in iter_raw_records("hf:someone/corpus/default@train")] == [1, 2, 3, 4, 5]
