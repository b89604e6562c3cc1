"""The embedded world pack: files, counts, provenance, and train/eval disjointness."""

import hashlib

import pytest

from safepretrain.world import World, WorldPackError, default_pack_path, load_world, loader, pack_sources
from safepretrain.world.dedup import near_duplicates
from safepretrain.world.loader import FILES, read_records

SOURCES = {"brown", "nlp_corpus", "spam_ham", "owt_wiki", "shakespeare", "spam", "toxic_web", "harmful_qa",
           "harmful_docs", "benign_docs"}


@pytest.fixture(scope="module")
def world() -> World:
    # loading is cheap: one read of each pack file (checked against the manifest as it is read), nothing else
    reads = []

    def counting_read(path, expected=None):
        reads.append(path)
        return read_records(path, expected)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(loader, "read_records", counting_read)
        w = load_world()
    assert sorted(reads) == sorted(default_pack_path() / name for name in FILES.values())
    return w


def train_side(w: World) -> list[str]:
    return ([p["prompt"] for p in w.harmful_train_prompts] + [lab["text"] for lab in w.scorer_labels]
            + [d["text"] for d in w.documents])


def test_every_file_matches_the_manifest(world):
    files = world.manifest["files"]
    assert set(files) == set(FILES.values())
    for attr, name in FILES.items():
        blob = (world.path / name).read_bytes()
        assert hashlib.sha256(blob).hexdigest() == files[name]["sha256"]
        assert len(getattr(world, attr)) == files[name]["records"] > 0
        for entry in files[name]["provenance"]:
            assert {"package", "version", "registry", "paths", "licence", "records"} <= set(entry)


def test_documents_have_every_source_and_schema(world):
    assert set(world.sources()) == SOURCES == set(pack_sources())
    assert all(set(d) == {"id", "source", "kind", "text"} for d in world.documents)
    assert len({d["id"] for d in world.documents}) == len(world.documents)
    kinds = {d["source"]: d["kind"] for d in world.documents}
    assert kinds["brown"] == "benign" and kinds["spam"] == "unsafe" and kinds["harmful_docs"] == "harmful"
    assert max(len(d["text"].split()) for d in world.documents) <= 400


def test_every_score_has_at_least_100_labels(world):
    counts = {s: 0 for s in range(6)}
    for lab in world.scorer_labels:
        assert lab["label_kind"] in ("human", "source") and lab["text"]
        counts[lab["score"]] += 1
    assert min(counts.values()) >= 100, counts


def test_eval_prompts_have_no_near_duplicates_on_the_train_side(world):
    evals = [p["prompt"] for p in world.harmful_eval_prompts]
    assert len(evals) >= 200
    assert near_duplicates(evals, train_side(world)) == set()


def test_benign_edgy_prompts_are_disjoint_from_harmful_train(world):
    edgy = [p["prompt"] for p in world.benign_edgy_prompts]
    assert near_duplicates(edgy, [p["prompt"] for p in world.harmful_train_prompts]) == set()
    assert near_duplicates(edgy, train_side(world)) == set()


def test_label_texts_are_not_document_texts(world):
    labels = [lab["text"] for lab in world.scorer_labels]
    assert near_duplicates(labels, [d["text"] for d in world.documents]) == set()


def test_prompt_records_schema(world):
    for rows in (world.harmful_train_prompts, world.harmful_eval_prompts, world.benign_edgy_prompts):
        assert all({"id", "prompt", "origin", "category"} <= set(r) for r in rows)
        assert len({r["id"] for r in rows}) == len(rows)
    assert {r["origin"] for r in world.harmful_eval_prompts} == {"harmbench", "strongreject"}
    assert {r["is_refusal"] for r in world.refusal_labels} == {True, False}


def test_notice_lists_every_file_package_and_licence(world):
    notice = (world.path / "NOTICE.md").read_text(encoding="utf-8")
    for name, info in world.manifest["files"].items():
        assert name in notice
        for entry in info["provenance"]:
            assert entry["package"] in notice and entry["licence"] in notice
    assert "safety research" in notice


def test_missing_pack_gives_the_fix(tmp_path):
    with pytest.raises(WorldPackError, match="safepretrain world build --out"):
        load_world(tmp_path / "nope")
    (tmp_path / "manifest.json").write_text((default_pack_path() / "manifest.json").read_text())
    with pytest.raises(WorldPackError, match="missing"):
        load_world(tmp_path)
