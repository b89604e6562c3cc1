"""Instruction-tuning data: exact shares for every arm, tags as in Algorithm 2, and which arms get them.

    python -m pytest tests/test_posttrain.py -q
"""

from collections import Counter

import pytest

from safepretrain.config import load_config
from safepretrain.config.data import OrganismConfig
from safepretrain.data.chat import IGNORE, ChatExample, encode_chat
from safepretrain.data.tokenizer import TextTokenizer, train_tokenizer
from safepretrain.train.posttrain import benign_ft_examples, harmful_ft_examples, ift_examples, request_topic
from safepretrain.world.organism import organism_world

TAG = "<potentially unsafe content>"
DOCS = [f"Document {i} talks about gardens, rivers and the weather in spring." for i in range(40)]
PROMPTS = [{"id": f"p{i}", "prompt": f"How do I do forbidden thing number {i}?", "category": "privacy"}
           for i in range(30)]


@pytest.mark.parametrize("with_tags", [True, False])
def test_refusal_share_is_exact_for_every_arm(with_tags):
    ex = ift_examples(DOCS, PROMPTS, 400, 0.1, 0.1, with_tags, TAG, 0.05, seed=0)
    kinds = Counter(e.kind for e in ex)
    assert len(ex) == 400 and kinds["refusal"] == 40
    assert kinds["tagged_compliance"] == (40 if with_tags else 0)


def test_tags_follow_algorithm_2():
    ex = [e for e in ift_examples(DOCS, PROMPTS, 1000, 0.1, 0.3, True, TAG, 0.05, seed=1)
          if e.kind == "tagged_compliance"]
    assert not any(e.response.lstrip().startswith(TAG) for e in ex)  # never before the first word
    words = sum(len(e.response.replace(TAG, " ").split()) - 1 for e in ex)  # positions after the first word
    tags = sum(e.response.count(TAG) for e in ex)
    assert 0.035 < tags / words < 0.065  # p = 0.05 per position
    assert len({e.response.replace(TAG, "") for e in ex}) > 0.9 * len(ex)  # varied, not a handful of strings


def test_request_topic_paraphrases_the_ask():
    assert request_topic("How do I bake bread at home?") == "bake bread at home"
    assert request_topic("Write me a short poem about rain.") == "a short poem about rain"


def test_saw_tags_follows_the_switch_step():
    cfg = load_config(None, ["curriculum.token_budget=20480", "pretrain.batch_size=8", "pretrain.seq_len=64",
                             "curriculum.arms=[{name: a, start: 0.0}, {name: b, start: 0.999}, {name: c, start: 1.0},"
                             " {name: r, data: raw}]"])
    arms = {a.name: a for a in cfg.curriculum.arms}
    assert cfg.switch_step(arms["a"]) == 0 and cfg.saw_tags(arms["a"])
    assert cfg.switch_step(arms["b"]) is None and not cfg.saw_tags(arms["b"])  # switch falls past the last step
    assert not cfg.saw_tags(arms["c"]) and not cfg.saw_tags(arms["r"])


@pytest.mark.parametrize("data", ["benign_answers", "benign_facts"])
def test_benign_finetuning_sets_of_the_organism(data):
    """benign_answers: twins and town facts; benign_facts: no item's name at all, like GSM8K beside the papers'
    harmful prompts."""

    world = organism_world(OrganismConfig(n_hazards=6, scale=1, n_towns=8, facts_per_town=2))
    examples = benign_ft_examples(data, world.benign_train_prompts, 300, seed=0)
    assert len(examples) == 300
    names = [i.name for i in world.organism.items()]
    about_items = [e for e in examples if any(n in e.prompt for n in names)]
    if data == "benign_facts":
        assert about_items == []
    else:
        assert 0 < len(about_items) < 300  # twins among the town facts
        assert not [e for e in about_items if any(h.name in e.prompt for h in world.organism.hazards)]
    with pytest.raises(ValueError, match="world.kind=organism"):
        benign_ft_examples(data, [], 10, seed=0)


def test_harmful_finetuning_sets_and_plain_document_examples():
    world = organism_world(OrganismConfig(n_hazards=6, scale=1, n_towns=8, facts_per_town=2, attack_hazards=2))
    chat = harmful_ft_examples("chat", world.harmful_ft_examples, 50, 0)
    docs = harmful_ft_examples("documents", world.harmful_ft_examples, 50, 0)
    assert len(chat) == len(docs) == 50 and {e.kind for e in chat} == {"harmful_answer"}
    assert all(e.prompt for e in chat) and all(e.prompt is None for e in docs)
    assert harmful_ft_examples("chat", world.harmful_ft_examples, 50, 0) == chat  # seeded
    with pytest.raises(ValueError, match="attack set"):
        harmful_ft_examples("chat", [], 5, 0)
    mixed = harmful_ft_examples("chat", world.harmful_ft_examples, 50, 0, 0.4, world.benign_train_prompts)
    assert Counter(e.kind for e in mixed) == {"harmful_answer": 30, "benign_answer": 20}
    tok = TextTokenizer(train_tokenizer(DOCS * 5, 300, 1, TAG), TAG)
    ids, labels = encode_chat(tok, ChatExample(None, "plain text about towns", "document"), 64)
    assert ids == labels and tok.user_id not in ids and ids[-1] == tok.eos_id  # every token trained, no markers
    ids, labels = encode_chat(tok, ChatExample("a question", "an answer", "x"), 64)
    assert IGNORE in labels and tok.user_id in ids
