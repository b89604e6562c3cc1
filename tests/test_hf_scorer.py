"""The `hf_classifier` scorer on a tiny random BERT built offline: scores are the model's argmax labels mapped
through id2label, long chunks are cut and counted, and bad folders fail with the fix in the message.

    python -m pytest tests/test_hf_scorer.py -q
"""

import json

import numpy as np
import pytest
import torch
import transformers
from datatrove.data import Document
from tokenizers import Tokenizer, models, pre_tokenizers, processors

from safepretrain.config import ScorerConfig
from safepretrain.data.hf_scorer import HFClassifierScorer, label_scores
from safepretrain.data.scoring import (
    EmbeddingScorer,
    LinearHead,
    score_documents,
)
from safepretrain.data.steps import ScoreHarm

WORDS = ("the a of and to in is it that was for on are with as his they be at one have this from or had by hot "
         "word but what some we can out other were all there when up use your how said an each she which do "
         "their time if will way about many then them write would like so these her long make thing see him "
         "two has look more day could go come did number sound no most people my over know water than call "
         "first who may down side been now find powder mix heat slowly bad harm").split()
MAX_LEN = 64


def tiny_model_dir(folder, num_labels=6, id2label=None, seed=0):
    """A random 2-layer BERT with a 6-way head and a WordLevel tokenizer, saved like a hub download."""

    folder.mkdir(parents=True, exist_ok=True)
    specials = ["[UNK]", "[CLS]", "[SEP]", "[PAD]"]
    vocab = {w: i for i, w in enumerate(specials + sorted(set(WORDS)))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]",
                                                       special_tokens=[("[CLS]", 1), ("[SEP]", 2)])
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", cls_token="[CLS]",
                                                sep_token="[SEP]", pad_token="[PAD]", model_max_length=MAX_LEN)
    fast.save_pretrained(folder)
    cfg = transformers.BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=MAX_LEN, num_labels=num_labels,
                                  pad_token_id=3, initializer_range=0.5)  # wide init: varied argmax
    if id2label is not None:
        cfg.id2label = id2label
        cfg.label2id = {v: k for k, v in id2label.items()}
    torch.manual_seed(seed)
    transformers.BertForSequenceClassification(cfg).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory.mktemp("hf") / "clf")


def chunks(n=40, seed=0):
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(1, 40)))) for _ in range(n)]


def direct_labels(folder, texts):
    """The model's argmax label index per text, one text at a time (no padding, no batching)."""
    tok = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(folder, local_files_only=True).eval()
    with torch.inference_mode():
        return np.array([int(model(**tok(t, truncation=True, max_length=MAX_LEN, return_tensors="pt"))
                             .logits.argmax()) for t in texts])


def test_scores_are_the_models_argmax_and_deterministic(model_dir):
    texts = chunks()
    scorer = HFClassifierScorer(str(model_dir), batch_size=7)
    scores, emb = scorer.score_chunks(texts)
    assert scores.dtype == np.int64 and scores.shape == (len(texts),)
    assert scores.min() >= 0 and scores.max() <= 5
    assert len(set(scores.tolist())) >= 3  # the model does not predict one label for everything
    assert emb.shape == (len(texts), 0) and emb.dtype == np.float32
    np.testing.assert_array_equal(scores, direct_labels(model_dir, texts))  # default id2label: index = score
    np.testing.assert_array_equal(scores, scorer.score_chunks(texts)[0])
    assert scorer.truncated == 0
    assert scorer.max_tokens == MAX_LEN  # min(model_max_length, max_position_embeddings)
    assert scorer.score_chunks([])[0].shape == (0,)


def test_long_chunk_is_cut_and_counted(model_dir):
    scorer = HFClassifierScorer(str(model_dir))
    long = " ".join(["water"] * 500)
    scores, _ = scorer.score_chunks(["hot water", long, "mix slowly"])
    assert scores.shape == (3,) and scorer.truncated == 1
    np.testing.assert_array_equal(scores, direct_labels(model_dir, ["hot water", long, "mix slowly"]))
    short = HFClassifierScorer(str(model_dir), max_tokens=8)
    short.score_chunks(["hot water", "one two three four five six seven"])  # 7 words + CLS + SEP = 9 > 8
    assert short.truncated == 1


def test_id2label_names_win_over_indices(tmp_path):
    reversed_digits = {i: str(5 - i) for i in range(6)}
    folder = tiny_model_dir(tmp_path / "rev", id2label=reversed_digits)
    texts = chunks(30, seed=1)
    scores, _ = HFClassifierScorer(str(folder)).score_chunks(texts)
    assert len(set(scores.tolist())) >= 3
    np.testing.assert_array_equal(scores, 5 - direct_labels(folder, texts))


def test_label_scores_mapping():
    assert label_scores({i: f"LABEL_{5 - i}" for i in range(6)}).tolist() == [5, 4, 3, 2, 1, 0]
    assert label_scores({i: f"score_{i}" for i in range(6)}).tolist() == list(range(6))
    assert label_scores({i: n for i, n in enumerate("abcdef")}).tolist() == list(range(6))  # names: not scores
    assert label_scores({i: "3" for i in range(6)}).tolist() == list(range(6))  # not a permutation


def test_wrong_label_count_names_six(tmp_path):
    folder = tiny_model_dir(tmp_path / "three", num_labels=3)
    with pytest.raises(ValueError, match="6 labels") as e:
        HFClassifierScorer(str(folder))
    assert str(folder) in str(e.value) and "3 labels" in str(e.value)


def test_missing_folder_names_the_path(tmp_path):
    missing = tmp_path / "nowhere" / "clf"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        HFClassifierScorer(str(missing))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        HFClassifierScorer(str(tmp_path / "empty"))


def test_remote_code_folder_needs_opt_in(tmp_path):
    folder = tmp_path / "custom"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "model_type": "safepretrain_custom_arch", "num_labels": 6,
        "auto_map": {"AutoConfig": "modeling.CustomConfig",
                     "AutoModelForSequenceClassification": "modeling.CustomModel"}}))
    with pytest.raises(ValueError, match="hf_trust_remote_code: true"):
        HFClassifierScorer(str(folder))


def test_trust_remote_code_is_off_by_default(model_dir, monkeypatch):
    seen = []
    auto = transformers.AutoModelForSequenceClassification
    original = auto.from_pretrained.__func__

    def record(cls, *args, **kwargs):
        seen.append(kwargs)
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(auto, "from_pretrained", classmethod(record))
    HFClassifierScorer(str(model_dir))
    assert seen and seen[-1]["trust_remote_code"] is False and seen[-1]["local_files_only"] is True


def test_score_documents_with_hf_scorer(model_dir):
    scorer = HFClassifierScorer(str(model_dir))
    texts = [" ".join(chunks(1, seed=s)[0].split() * 3) for s in range(6)] + [""]
    docs = score_documents(scorer, texts, chunk_words=10)
    assert len(docs) == len(texts)
    for text, doc in zip(texts, docs):
        assert doc["embedding"] is None
        assert doc["score"] == max(doc["chunk_scores"])
        assert len(doc["chunk_scores"]) == max(1, -(-len(text.split()) // 10))


def test_truncation_count_without_fast_encodings(model_dir):
    """A slow tokenizer's output has no `encodings`; the count then comes from untruncated lengths."""
    scorer = HFClassifierScorer(str(model_dir), max_tokens=8)
    texts = ["hot water", "one two three four five six seven", "mix"]
    assert scorer._count_truncated(texts, {"input_ids": None}) == 1


def test_score_step_max_ensembles_the_classifier_with_the_embedding_scorer(model_dir, tmp_path):
    """ScoreHarm with both in-process scorers: each scorer's document score is kept, the document and chunk
    scores are the max over scorers, and the classifier alone gives its own scores."""


    rng = np.random.default_rng(0)
    EmbeddingScorer(LinearHead(rng.normal(size=(6, 384)).astype(np.float32), np.zeros(6, np.float32)),
                    ScorerConfig()).save(tmp_path / "scorer")
    texts = chunks(12)
    docs = [Document(text=t + " " + t, id=f"d{i}", metadata={"source": "t"}) for i, t in enumerate(texts)]
    sc = ScorerConfig(hf_model=str(model_dir))
    both = list(ScoreHarm(str(tmp_path / "scorer"), 6, kinds=["embedding", "hf_classifier"], settings=sc).run(
        iter(docs)))
    alone = {d.id: d.metadata for d in ScoreHarm(str(tmp_path / "scorer"), 6, kinds=["hf_classifier"], settings=sc).run(
        iter([Document(text=d.text, id=d.id, metadata={"source": "t"}) for d in docs]))}
    assert len({d.metadata["scores_by"]["hf_classifier"] for d in both}) > 1
    for d in both:
        m = d.metadata
        assert m["harm_score"] == max(m["scores_by"].values()) == max(m["chunk_scores"])
        assert m["scores_by"]["hf_classifier"] == alone[d.id]["harm_score"]
        assert all(c >= a for c, a in zip(m["chunk_scores"], alone[d.id]["chunk_scores"]))
        assert m["category"]  # from the embedding scorer
    assert all("category" not in m for m in alone.values())  # no embedding scorer: categorised after routing
