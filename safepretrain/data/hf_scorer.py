"""A local Hugging Face sequence-classification model as a 0-5 harmfulness scorer (`scorer.kind: hf_classifier`).

The paper's own classifier (locuslab/safety-classifier_gte-large-en-v1.5) is a 6-label head; any folder with a
6-label model and its tokenizer works. Nothing is downloaded (`local_files_only=True`), and the folder's own
Python code runs only when the caller opts in (`trust_remote_code`), because that code runs with our rights.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from safepretrain.data.scoring import N_SCORES

_DEFAULT_MAX_TOKENS = 512
_SANE_MAX_TOKENS = 1_000_000  # tokenizers without a limit report model_max_length = 1e30
_LABEL_SCORE = re.compile(r"(?:[A-Za-z]+[_\- ]?)?([0-5])")  # "3", "LABEL_3", "score_3", "score 3"


def label_scores(id2label: dict | None) -> np.ndarray:
    """Score of each label index. A head trained with labels named "0".."5" (or "LABEL_3", "score_3") may list
    them in any order, so the names win when they name each score once; otherwise index i is score i."""
    identity = np.arange(N_SCORES, dtype=np.int64)
    if not id2label or len(id2label) != N_SCORES:
        return identity
    out = np.empty(N_SCORES, dtype=np.int64)
    for idx, label in id2label.items():
        m = _LABEL_SCORE.fullmatch(str(label).strip())
        if m is None or not 0 <= int(idx) < N_SCORES:
            return identity
        out[int(idx)] = int(m.group(1))
    return out if sorted(out.tolist()) == list(range(N_SCORES)) else identity


def _sane(n) -> bool:
    return isinstance(n, int) and 0 < n <= _SANE_MAX_TOKENS


class HFClassifierScorer:
    """A 6-label sequence classifier; the chunk score is the argmax label's score. It has no embeddings, so
    `score_chunks` returns an (N, 0) array and documents keep the category they came with (or none)."""

    name = "hf_classifier"

    def __init__(self, model_dir: str, trust_remote_code: bool = False, max_tokens: int | None = None,
                 batch_size: int = 32, device: str = "cpu"):
        # heavy (seconds of import): loaded only when a model is, not by every importer
        from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer  # noqa: PLC0415

        folder = Path(model_dir)
        if not folder.is_dir():
            raise FileNotFoundError(f"hf_classifier model folder {model_dir} does not exist; download a 6-label "
                                    "harmfulness classifier there first (e.g. `hf download "
                                    f"locuslab/safety-classifier_gte-large-en-v1.5 --local-dir {model_dir}`) "
                                    "or fix data.scorer.hf_model")
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"hf_classifier model folder {model_dir} has no config.json; point "
                                    "data.scorer.hf_model at the folder save_pretrained / `hf download` wrote")
        kw = {"local_files_only": True, "trust_remote_code": trust_remote_code}
        try:
            # the config first: a wrong label count is reported before any weights are read
            config = AutoConfig.from_pretrained(model_dir, **kw)
            if config.num_labels != N_SCORES:
                raise ValueError(f"hf_classifier model {model_dir} has {config.num_labels} labels; the scorer needs "
                                 f"a 0-5 harmfulness classifier with {N_SCORES} labels (e.g. a download of "
                                 "locuslab/safety-classifier_gte-large-en-v1.5)")
            self.tokenizer = AutoTokenizer.from_pretrained(model_dir, **kw)
            self.model = AutoModelForSequenceClassification.from_pretrained(model_dir, config=config, **kw)
        except ValueError as e:
            if not trust_remote_code and "trust_remote_code" in str(e):
                raise ValueError(f"hf_classifier model {model_dir} needs its own Python code to load (custom "
                                 "architecture); set `data.scorer.hf_trust_remote_code: true` only for a folder "
                                 "you trust, since that code runs with your rights") from e
            raise
        self.model.to(device).eval()
        self.device = device
        self.batch_size = batch_size
        self.scores_of_label = label_scores(getattr(config, "id2label", None))
        if max_tokens is None:
            limits = [n for n in (getattr(self.tokenizer, "model_max_length", None),
                                  getattr(config, "max_position_embeddings", None)) if _sane(n)]
            max_tokens = min(limits) if limits else _DEFAULT_MAX_TOKENS
        self.max_tokens = int(max_tokens)
        self.truncated = 0  # chunks longer than max_tokens, cut (counted over the scorer's life)

    def score_chunks(self, chunks: list[str]) -> tuple[np.ndarray, np.ndarray]:
        scores = np.zeros(len(chunks), dtype=np.int64)
        # longest first within the call, so each batch pads to similar lengths (one long chunk does not make a
        # whole batch pay for its padding); results go back in input order
        order = sorted(range(len(chunks)), key=lambda i: len(chunks[i]), reverse=True)
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            scores[idx] = self._score_batch([chunks[i] for i in idx])
        return scores, np.zeros((len(chunks), 0), dtype=np.float32)

    def _score_batch(self, texts: list[str]) -> np.ndarray:
        enc = self.tokenizer(texts, truncation=True, max_length=self.max_tokens, padding=True, return_tensors="pt")
        self.truncated += self._count_truncated(texts, enc)
        with torch.inference_mode():
            logits = self.model(**{k: v.to(self.device) for k, v in enc.items()}).logits
        return self.scores_of_label[logits.argmax(dim=-1).cpu().numpy()]

    def _count_truncated(self, texts: list[str], enc) -> int:
        """Chunks the tokenizer cut. A fast tokenizer keeps what it cut in `overflowing` (free); a slow one
        is asked again without truncation."""
        if getattr(enc, "encodings", None) is not None:
            return sum(bool(e.overflowing) for e in enc.encodings)
        full = self.tokenizer(texts, truncation=False, add_special_tokens=True)["input_ids"]
        return sum(len(ids) > self.max_tokens for ids in full)
