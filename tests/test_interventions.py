"""Tag injection, routing by score, and the offline generators.

    python -m pytest tests/test_interventions.py -q
"""

import json
import os
import random
import subprocess
import sys

import numpy as np
import pytest
from datatrove.data import Document

from safepretrain.config import DataConfig
from safepretrain.data import interventions as iv
from safepretrain.data.read_step import ReadCorpus
from safepretrain.data.scoring import chunk_text, score_documents
from safepretrain.data.steps import route_and_intervene

TAG = "<potentially unsafe content>"


@pytest.mark.parametrize("p", [0.03, 0.05, 0.10])
def test_tag_injection_rate_matches_p(p):
    words = " ".join(f"w{i}" for i in range(20001))
    out = iv.inject_tags(words, TAG, p, random.Random(0))
    rate = out.count(TAG) / 20000  # decisions are made for every word after the first
    assert abs(rate - p) < 4 * (p * (1 - p) / 20000) ** 0.5 + 1e-3
    assert out.replace(TAG, "") == words  # nothing else changes


def test_tag_is_glued_to_the_previous_word_and_never_first():
    out = iv.inject_tags("alpha beta\ngamma", TAG, 1.0, random.Random(0))
    assert out == f"alpha{TAG} beta{TAG}\ngamma"
    assert iv.inject_tags("single", TAG, 1.0, random.Random(0)) == "single"


def routed(score, chunk_scores, category="fraud_deception"):
    chunks = [f"chunk number {i} talks about birds and gardens" for i in range(len(chunk_scores))]
    return Document(text=" ".join(chunks), id=f"doc{score}",
                    metadata={"source": "t", "kind": "x", "harm_score": score, "chunk_scores": chunk_scores,
                              "category": category})


def run_router(docs, **routing):
    cfg = DataConfig(routing=routing) if routing else DataConfig()
    cfg.scorer.chunk_words = 8
    return run_steps(route_and_intervene(cfg, val_fraction=0.0, seed=0), docs)


def run_steps(steps, docs):
    data = iter(docs)
    for step in steps:  # chained as datatrove chains them
        data = step.run(data)
    return list(data)


def test_routing_by_score():
    out = run_router([routed(0, [0]), routed(2, [0, 2]), routed(5, [5, 0])])
    streams = {(d.id.split(":")[0], d.metadata["stream"]) for d in out}
    assert streams == {("doc0", "safe"),
                       ("doc2", "unsafe"), ("doc2", "rephrased"), ("doc2", "tagged"),
                       ("doc5", "unsafe"), ("doc5", "refusal"), ("doc5", "moral_ed"), ("doc5", "tagged")}


def test_tag_only_in_tagged_stream():
    out = run_router([routed(s, [s, 0, s]) for s in range(6)])
    for d in out:
        if d.metadata["stream"] != "tagged":
            assert TAG not in d.text, d.metadata["stream"]


def test_tagged_stream_is_stored_untagged_with_what_fixes_its_tags():
    """The tags go in on the ids when the stream is encoded (tests/test_tag_tokens.py); the stored document is the
    unsafe text, its source id and p, from which `tagged_text` rebuilds the tagged text."""
    out = run_router([routed(s, [s, 0, s]) for s in range(1, 6)])
    unsafe = {d.metadata["source_id"]: d.text for d in out if d.metadata["stream"] == "unsafe"}
    tagged = [d for d in out if d.metadata["stream"] == "tagged"]
    assert tagged and all(d.text == unsafe[d.metadata["source_id"]] for d in tagged)
    for d in tagged:
        record = {"text": d.text, **d.metadata}
        assert record["tag_probability"] == DataConfig().interventions.tag_probability
        assert iv.tagged_text(record, TAG, 0) == iv.inject_tags(d.text, TAG, record["tag_probability"],
                                                                iv.doc_rng(record["source_id"], 0, "tag"))


def test_tag_threshold_and_val_split_are_configurable():
    out = run_router([routed(2, [2])], tag_min_score=3)
    assert "tagged" not in {d.metadata["stream"] for d in out}
    cfg = DataConfig()
    docs = [Document(text="x y z", id=f"d{i}", metadata={"source": "t", "harm_score": 0, "chunk_scores": [0],
                                                          "category": "privacy"}) for i in range(400)]
    val = sum(d.metadata["stream"] == "val" for d in run_steps(route_and_intervene(cfg, 0.25, 0), docs))
    assert 60 < val < 140


def test_rephrase_keeps_safe_chunks_and_replaces_flagged_ones():
    doc = iv.Routed("d1", "", 2, [0, 3, 3, 0], ["safe one.", "flagged a.", "flagged b.", "safe two."], "privacy")
    text, style = iv.rephrase(doc, seed=0)
    assert "safe one." in text and "safe two." in text and "flagged" not in text
    assert text.count(iv.templates()["category_phrases"]["privacy"]) == 1  # one disclaimer per flagged run
    assert style in iv.templates()["rephrase_styles"]
    styles = {iv.rephrase(iv.Routed(f"d{i}", "", 2, [0], ["x"], "privacy"), 0)[1] for i in range(200)}
    assert len(styles) == 7  # all seven paper styles are used


def test_generators_are_seeded_and_varied():
    doc = iv.Routed("d9", "", 5, [5], ["some words here"], "malware_hacking")
    first = iv.refusal_dialogue(doc, 0)
    assert first != iv.refusal_dialogue(doc, 1)
    dialogues = {iv.refusal_dialogue(iv.Routed(f"d{i}", "", 5, [5], ["w"], "privacy"), 0)[0] for i in range(50)}
    assert len(dialogues) > 25
    # the dialogue depends on (document, seed) only: not on what was generated before or the global RNG ...
    random.random()
    assert iv.refusal_dialogue(iv.Routed("d9", "", 5, [5], ["some words here"], "malware_hacking"), 0) == first
    # ... nor on the process (its hash seed, its template cache)
    child = ("import json; from safepretrain.data import interventions as iv; "
             "print(json.dumps(iv.refusal_dialogue(iv.Routed('d9', '', 5, [5], ['some words here'], "
             "'malware_hacking'), 0)))")
    out = subprocess.run([sys.executable, "-c", child], env={**os.environ, "PYTHONHASHSEED": "0"},
                         capture_output=True, text=True, check=True).stdout
    assert tuple(json.loads(out)) == first
    text, _ = first
    assert iv.templates()["refusal"]["harm"]["malware_hacking"] in text
    assert iv.moral_education(doc, 0).startswith("# ")


class FakeScorer:
    """Scores a chunk by the digit it contains (0 if none)."""

    name = "fake"

    def score_chunks(self, chunks):
        scores = np.array([max([int(c) for c in ch if c.isdigit()] or [0]) for ch in chunks])
        return scores, np.eye(len(chunks), 4, dtype=np.float32)


def test_document_score_is_max_over_chunks():
    texts = ["a b c d 3 e f", "x y", "1 a b c d e f g 4"]
    res = score_documents(FakeScorer(), texts, chunk_words=4)
    assert [r["score"] for r in res] == [3, 0, 4]
    assert res[0]["chunk_scores"] == [0, 3]
    assert chunk_text("", 5) == [""]


def test_unreadable_records_are_counted_and_set_aside(tmp_path):
    f = tmp_path / "corpus.jsonl"
    lines = ['{"id": "a", "text": "fine text"}', "{not json", "[1, 2]", '{"id": "b"}', '{"text": "   "}',
             '{"text": "no id but fine"}']
    f.write_text("\n".join(lines) + "\n")
    step = ReadCorpus([str(f)], str(tmp_path / "rejected"), max_words=100)
    docs = list(step.run(None, rank=0, world_size=1))
    assert [d.text for d in docs] == ["fine text", "no id but fine"]
    rejected = [json.loads(x) for x in (tmp_path / "rejected" / "00000.jsonl").read_text().splitlines()]
    assert [(r["line"], r["reason"]) for r in rejected] == [
        (2, "invalid_json"), (3, "not_an_object"), (4, "missing_text"), (5, "empty_text")]
    assert step.stats["rejected"].total == 4


def test_reader_shards_lines_across_ranks(tmp_path):
    f = tmp_path / "c.jsonl"
    f.write_text("".join(json.dumps({"id": str(i), "text": f"t{i}"}) + "\n" for i in range(10)))
    got = [[d.id for d in ReadCorpus([str(f)], str(tmp_path / "r"), 50).run(None, r, 3)] for r in range(3)]
    assert sorted(sum(got, [])) == sorted(str(i) for i in range(10))  # each record on exactly one rank
    assert all(got)  # and the ranks share the work


@pytest.mark.parametrize("world_size", [1, 3])
def test_bom_invalid_utf8_and_duplicate_ids(tmp_path, world_size):
    f = tmp_path / "c.jsonl"
    f.write_bytes(b'\xef\xbb\xbf{"id": "a", "text": "first record after a byte-order mark"}\n'
                  b'{"id": "b", "text": "bad byte \xff here"}\n'
                  b'{"id": "a", "text": "the same id again"}\n'
                  b'{"text": "no id"}\n{"text": "no id"}\n'
                  b'{"id": "c", "text": "fine"}\n')
    docs, rejected = [], []
    for r in range(world_size):
        step = ReadCorpus([str(f)], str(tmp_path / f"rej{world_size}"), 100)
        docs += [d.text for d in step.run(None, r, world_size)]
        rejected += [json.loads(x) for x in (tmp_path / f"rej{world_size}" / f"{r:05d}.jsonl").read_text().splitlines()]
    assert sorted(docs) == sorted(["first record after a byte-order mark", "no id", "fine"])
    assert sorted((x["line"], x["reason"]) for x in rejected) == [
        (2, "invalid_utf8"), (3, "duplicate_id"), (5, "duplicate_id")]


def _truth_doc(doc_id, truth, scored):
    return Document(text="chunk about birds and gardens", id=doc_id,
                    metadata={"source": "t", "kind": "x", "harm_score": scored, "chunk_scores": [scored],
                              "category": "physical_harm", "truth": truth})


def test_routing_by_truth_ignores_the_scorer_and_flips_labels_at_the_error_rate():
    docs = [_truth_doc(f"d{i}", 5 if i % 2 else 0, 0 if i % 2 else 4) for i in range(400)]  # the scorer is wrong
    out = run_router(docs, by="truth")
    streams = {d.id.split(":")[0]: set() for d in out}
    for d in out:
        streams[d.id.split(":")[0]].add(d.metadata["stream"])
    assert all(("refusal" in streams[f"d{i}"]) == bool(i % 2) for i in range(400))
    assert all(d.metadata["routed_score"] == d.metadata["truth"] for d in out)
    flipped = run_router(docs, by="truth", truth_error_rate=0.25)
    leaked = {d.id.split(":")[0] for d in flipped if d.metadata["stream"] == "safe" and d.metadata["truth"] == 5}
    alarms = {d.id.split(":")[0] for d in flipped if d.metadata["stream"] == "unsafe" and d.metadata["truth"] == 0}
    assert 25 <= len(leaked) <= 75 and 25 <= len(alarms) <= 75  # ~50 each of 200
    again = run_router(docs, by="truth", truth_error_rate=0.25)
    assert [d.id for d in again] == [d.id for d in flipped]  # by hash of the id: reproducible


def test_routing_by_truth_without_labels_fails_with_the_reason():
    with pytest.raises(ValueError, match="no truth label"):
        run_router([routed(2, [2])], by="truth")
