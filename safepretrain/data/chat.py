"""The chat template, the completion-style prompt, and loss masks for chat training.

Chat format (markers are single special tokens):  `<|user|>{prompt}<|end|><|assistant|>{response}<|end|>`.
Loss is on the response and its closing `<|end|>` only. A tuned model is prompted with everything up
to and including `<|assistant|>`. Training, evaluation and serving all format prompts here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from safepretrain.data.tokenizer import TextTokenizer

IGNORE = -100


def chat_prompt_ids(tok: TextTokenizer, prompt: str) -> list[int]:
    """Token ids of a chat prompt, ending with the assistant marker (generation starts after it)."""
    return [tok.user_id, *tok.encode(prompt), tok.end_id, tok.assistant_id]


def completion_prompt(prompt: str) -> str:
    """Completion-style prefix for base models (the papers rewrite requests as document prefixes).

    "Question:/Answer:" is the layout of the harmful Q&A documents in the world's raw data and one of
    the role pairs of the refusal dialogues, so base models of every arm have seen it."""
    return f"Question: {prompt}\nAnswer:"


@dataclass(frozen=True)
class ChatExample:
    prompt: str | None  # None: `response` is plain text (a document), trained on every token, no chat markers
    response: str
    kind: str  # "instruction" | "refusal" | "tagged_compliance" | "math" | "harmful_answer" | "document"


def encode_chat(tok: TextTokenizer, ex: ChatExample, max_len: int) -> tuple[list[int], list[int]]:
    """(input ids, targets) of length ≤ max_len + 1 before shifting; targets are IGNORE off the response."""
    if ex.prompt is None:
        ids = [*tok.encode(ex.response), tok.eos_id][: max_len + 1]
        return ids, list(ids)
    prompt = chat_prompt_ids(tok, ex.prompt)
    response = [*tok.encode(ex.response), tok.end_id]
    ids = (prompt + response)[: max_len + 1]
    labels = ([IGNORE] * len(prompt) + response)[: max_len + 1]
    return ids, labels


class ChatBatches:
    """Padded (B, T) batches of chat examples; `batch(step)` is a pure function of (seed, step)."""

    def __init__(self, tok: TextTokenizer, examples: list[ChatExample], batch_size: int, seq_len: int,
                 steps: int, seed: int):
        if not examples:
            raise ValueError("no post-training examples; check the world prompts and generator settings")
        self.encoded = [encode_chat(tok, ex, seq_len) for ex in examples]
        self.kinds = [ex.kind for ex in examples]
        self.pad_id, self.batch_size, self.seq_len = tok.pad_id, batch_size, seq_len
        self.total_steps, self.seed = steps, seed

    def _rows(self, step: int) -> np.ndarray:
        return np.random.default_rng([self.seed, step]).integers(0, len(self.encoded), size=self.batch_size)

    def tokens_seen(self) -> dict[str, int]:
        """Tokens the whole run reads (`tokens`: unpadded inputs) and trains on (`loss_tokens`: targets not
        IGNORE), summed over its `total_steps` batches: the stage's size, for the report's token table."""
        seen = loss = 0
        for step in range(self.total_steps):
            for i in self._rows(step):
                ids, labels = self.encoded[i]
                seen += len(ids) - 1
                loss += sum(t != IGNORE for t in labels[1:])
        return {"tokens": seen, "loss_tokens": loss}

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor, dict]:
        idx = self._rows(step)
        width = max(len(self.encoded[i][0]) for i in idx) - 1
        x = torch.full((self.batch_size, width), self.pad_id, dtype=torch.long)
        y = torch.full((self.batch_size, width), IGNORE, dtype=torch.long)
        for row, i in enumerate(idx):
            ids, labels = self.encoded[i]
            x[row, : len(ids) - 1] = torch.tensor(ids[:-1])
            y[row, : len(ids) - 1] = torch.tensor(labels[1:])
        return x, y, {"phase": "sft", "interventions": False}
