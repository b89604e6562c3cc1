"""Property-based fuzzing (hypothesis) of the corpus reader, the config loader and the atomic writers.

    python -m pytest tests/test_fuzz.py -q
"""

import errno
import json
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from safepretrain.config import ConfigError, load_config
from safepretrain.data.read_step import ReadCorpus
from safepretrain.utils import write_json, write_jsonl

# 150 cases per property in CI; SAFEPRETRAIN_FUZZ_EXAMPLES=5000 for a longer hunt by hand
FUZZ = settings(max_examples=int(os.environ.get("SAFEPRETRAIN_FUZZ_EXAMPLES", 150)), deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])

json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                                       max_size=3), max_leaves=8)
lines = st.one_of(st.binary(max_size=200), st.text(max_size=200).map(str.encode),
                  json_values.map(lambda v: json.dumps(v).encode()),
                  st.builds(lambda i, t: json.dumps({"id": i, "text": t}).encode(),
                            st.sampled_from(["a", "b", "c", ""]), st.text(max_size=50)),
                  st.just(b"x" * 5000))


@FUZZ
@given(st.lists(lines, max_size=25), st.sampled_from([1, 2, 3]), st.sampled_from([1000, 1_000_000]))
def test_every_record_is_read_or_set_aside_with_a_reason(tmp_path, records, world_size, max_bytes):
    """max_bytes=1000 also sends the 5,000-byte lines down the too_large path."""
    corpus = tmp_path / "c.jsonl"
    corpus.write_bytes(b"\n".join(r.replace(b"\n", b" ").replace(b"\r", b" ") for r in records) + b"\n")
    content = corpus.read_bytes().removeprefix(b"\xef\xbb\xbf")  # a byte-order mark is not a record
    nonblank = sum(1 for line in content.split(b"\n") if line.strip())
    read, rejected = 0, 0
    for rank in range(world_size):
        out = tmp_path / f"rej{world_size}"
        read += sum(1 for _ in ReadCorpus([str(corpus)], str(out), 50, max_bytes=max_bytes).run(None, rank, world_size))
        rows = [json.loads(x) for x in (out / f"{rank:05d}.jsonl").read_text().splitlines()]
        assert all(r["reason"] for r in rows)
        rejected += len(rows)
    assert read + rejected == nonblank  # counts add up: nothing lost, nothing counted twice


config_keys = st.sampled_from(["pretrain.lr", "pretrain.batch_size", "curriculum.token_budget", "eval.n_harmful",
                               "data.interventions.tag_probability", "model.d_model", "seeds", "eval.decoders",
                               "curriculum.arms.1.start", "pretrain.device", "eval.max_new_tokens"])
bad_values = st.sampled_from(["-1", "0", "nan", "inf", "-inf", "banana", "[]", "{}", "1e30", "[1, 1]", "2.5",
                              "null", "''"])


@FUZZ
@given(config_keys, bad_values)
def test_an_invalid_setting_is_refused_naming_its_field_or_accepted_whole(key, value):
    try:
        cfg = load_config(None, [f"{key}={value}"])
    except ConfigError as err:
        assert key.split(".")[0] in str(err)  # the message names the section or field
        return
    cfg.model_validate(cfg.model_dump())  # what is accepted is a whole, valid config


@pytest.mark.parametrize("writer", ["json", "jsonl"])
def test_disk_full_keeps_the_previous_file(tmp_path, monkeypatch, writer):
    target = tmp_path / ("out.json" if writer == "json" else "out.jsonl")
    write_json(target, {"v": 1}) if writer == "json" else write_jsonl(target, [{"v": 1}])
    before = target.read_bytes()

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    if writer == "json":
        monkeypatch.setattr("pathlib.Path.write_text", full)
        with pytest.raises(OSError):
            write_json(target, {"v": 2})
    else:
        def records():
            yield {"v": 2}
            full()

        with pytest.raises(OSError):
            write_jsonl(target, records())
    monkeypatch.undo()
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name]  # no temporary left behind
    write_json(target, {"v": 3}) if writer == "json" else write_jsonl(target, [{"v": 3}])  # space is back
    assert b"3" in target.read_bytes()


def test_a_huge_line_is_set_aside_without_being_read_whole(tmp_path):
    corpus = tmp_path / "c.jsonl"
    huge = json.dumps({"id": "big", "text": "word " * 400_000})  # ~2 MB on one line
    fine = [json.dumps({"id": i, "text": "fine"}) for i in ("a", "b")]
    corpus.write_text(fine[0] + "\n" + huge + "\n" + fine[1])  # the last line has no newline
    docs = list(ReadCorpus([str(corpus)], str(tmp_path / "rej"), 50, max_bytes=100_000).run(None, 0, 1))
    assert [d.id for d in docs] == ["a", "b"]  # the record after the huge one is read intact
    (row,) = [json.loads(x) for x in (tmp_path / "rej" / "00000.jsonl").read_text().splitlines()]
    assert row["reason"] == "too_large" and row["line"] == 2 and len(row["raw"]) == 2000
