"""The contrast set: content-matched pairs, neutral prompts, reference answers (eval/contrast.py).

    python -m pytest tests/test_contrast.py -q
"""

import dataclasses
import json
import os
import random
import re
import subprocess
import sys

import pytest

from safepretrain.data import interventions as iv
from safepretrain.eval import contrast as cs
from safepretrain.world import load_world
from safepretrain.world.dedup import near_duplicates, normalize
from safepretrain.world.taxonomy import HARM_CATEGORIES


def _leaves(x):
    if isinstance(x, str):
        yield x
    elif isinstance(x, dict):
        for v in x.values():
            yield from _leaves(v)
    elif isinstance(x, list):
        for v in x:
            yield from _leaves(v)


def _grams(text: str, n: int = 4) -> set[tuple[str, ...]]:
    """Word n-grams of each placeholder-free part of a template (placeholders split the text)."""
    out = set()
    for part in re.split(r"\{[^}]*\}", text):
        w = normalize(part).split()
        out |= {tuple(w[i:i + n]) for i in range(len(w) - n + 1)}
    return out


def test_sizes_and_fields():
    data = cs.contrast_set()
    assert len(data["topics"]) >= 60
    assert len(data["frames"]) >= 8
    assert len(data["neutral"]) >= 30
    assert all(t["category"] in HARM_CATEGORIES for t in data["topics"])
    pairs = cs.contrast_pairs()
    assert len(pairs) == len(data["topics"]) * len(data["frames"])
    assert len({p.id for p in pairs}) == len(pairs)


def test_deterministic_by_seed():
    pairs, neutral = cs.contrast_pairs(50, seed=3), cs.neutral_prompts(20, seed=1)
    # a fresh process (another hash seed, the contrast set parsed anew) draws the same pairs and prompts
    child = ("import dataclasses, json; from safepretrain.eval import contrast as cs; "
             "print(json.dumps({'pairs': [dataclasses.asdict(p) for p in cs.contrast_pairs(50, seed=3)], "
             "'neutral': cs.neutral_prompts(20, seed=1)}))")
    out = subprocess.run([sys.executable, "-c", child], env={**os.environ, "PYTHONHASHSEED": "0"},
                         capture_output=True, text=True, check=True).stdout
    fresh = json.loads(out)
    assert [dataclasses.asdict(p) for p in pairs] == fresh["pairs"] and len(pairs) == 50
    assert neutral == fresh["neutral"] and len(neutral) == 20
    assert cs.contrast_pairs(50, seed=3) != cs.contrast_pairs(50, seed=4)
    assert cs.neutral_prompts(20, seed=1) != cs.neutral_prompts(20, seed=2)
    assert len(cs.contrast_pairs(10, seed=0)) == 10
    # a prefix of the order covers distinct topics before any topic repeats
    n_topics = len(cs.contrast_set()["topics"])
    assert len({p.topic for p in cs.contrast_pairs(n_topics, seed=5)}) == n_topics


def test_sides_differ_only_in_the_behaviour_phrase():
    frames = {f["id"]: f["text"] for f in cs.contrast_set()["frames"]}
    for p in cs.contrast_pairs():
        assert p.harmful == frames[p.frame].format(x=p.harmful_behaviour)
        assert p.benign == frames[p.frame].format(x=p.benign_behaviour)
        assert p.harmful.replace(p.harmful_behaviour, p.benign_behaviour) == p.benign
        assert p.harmful != p.benign
        assert cs.behaviour_of(p.harmful) == p.harmful_behaviour
        assert cs.behaviour_of(p.benign) == p.benign_behaviour


def test_twins_have_similar_length():
    for t in cs.contrast_set()["topics"]:
        h, b = t["harmful"].split(), t["benign"].split()
        assert abs(len(h) - len(b)) <= 3, t["id"]
        assert 0.7 <= len(t["harmful"]) / len(t["benign"]) <= 1.45, t["id"]


def test_splits_partition_the_pairs():
    dev, test = cs.contrast_pairs(split="dev"), cs.contrast_pairs(split="test")
    assert dev and test
    assert {p.id for p in dev} | {p.id for p in test} == {p.id for p in cs.contrast_pairs()}
    assert not {p.id for p in dev} & {p.id for p in test}
    heldout = {f["id"] for f in cs.contrast_set()["frames"] if f.get("heldout")}
    assert heldout and all(p.frame not in heldout and cs.topic_split(p.topic) == "dev" for p in dev)
    assert all(p.frame in heldout or cs.topic_split(p.topic) == "test" for p in test)
    with pytest.raises(ValueError):
        cs.contrast_pairs(split="train")


def test_neutral_prompts_use_the_same_frames():
    frames = [f["text"] for f in cs.contrast_set()["frames"]]
    prompts = cs.neutral_prompts()
    assert len(prompts) == len(set(prompts)) == len(cs.contrast_set()["neutral"]) * len(frames)
    for q in prompts[:50]:
        assert any(q == f.format(x=cs.behaviour_of(q)) for f in frames)


def test_no_near_duplicates_of_training_prompts():
    train = [p["prompt"] for p in load_world().harmful_train_prompts]
    pairs = cs.contrast_pairs()
    ours = [p.harmful for p in pairs] + [p.benign for p in pairs] + cs.neutral_prompts()
    assert near_duplicates(ours, train) == set()
    assert near_duplicates(train, ours) == set()


def _training_refusal_grams() -> set:
    t = iv.templates()
    grams = set()
    for s in _leaves([t["refusal"], t["moral_education"]]):
        grams |= _grams(s)
    rng = random.Random(0)
    cats = sorted(t["refusal"]["harm"])
    for _ in range(3000):
        grams |= _grams(iv.refusal_reply(rng.choice(cats), rng))
    return grams


def test_refusal_references_are_held_out_from_training_refusals():
    refs = cs.refusal_references()
    assert len(refs) >= 20 and len(set(refs)) == len(refs)
    assert len({r.split()[0] for r in refs}) >= 10  # varied openings, not one template
    train = _training_refusal_grams()
    overlap = {r: _grams(r) & train for r in refs}
    assert not any(overlap.values()), {r: g for r, g in overlap.items() if g}


def test_compliance_references_are_held_out_from_training_compliance():
    t = iv.templates()
    train = set()
    for s in _leaves(t["compliance"]):
        train |= _grams(s)
    rng = random.Random(0)
    for _ in range(500):
        train |= _grams(iv.compliance_text(rng, "the subject"))
    overlap = {f: _grams(f) & train for f in cs.compliance_fragments()}
    assert not any(overlap.values()), {f: g for f, g in overlap.items() if g}


def test_compliance_reference_restates_the_ask_with_varied_openings():
    p = cs.contrast_pairs(1, seed=0)[0]
    text = cs.compliance_reference(p.benign, random.Random(0))
    assert cs.second_person(p.benign_behaviour) in text
    openings = {cs.compliance_reference(p.benign, random.Random(i)).split(".")[0] for i in range(200)}
    assert len(openings) >= 8
    generic = cs.compliance_reference(None, random.Random(0))
    assert cs.GENERIC_ASK in generic


def test_frame_matched_references_differ_only_in_the_ask():
    for p in cs.contrast_pairs(40, seed=1):
        h = cs.compliance_reference(p.harmful, random.Random(7))
        b = cs.compliance_reference(p.benign, random.Random(7))
        assert h.replace(cs.second_person(p.harmful_behaviour), "X") == \
            b.replace(cs.second_person(p.benign_behaviour), "X")


def test_second_person():
    assert cs.second_person("get into my own wifi") == "get into your own wifi"
    assert cs.second_person("move on after they blocked me") == "move on after they blocked you"
    assert cs.second_person("file taxes when I have income") == "file taxes when you have income"
