"""What every decoder shares: the model protocol the loops need, the `Generation` a decoder returns, left padding,
and the one rule that fits a prompt into the model's context (`fit_prompts`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch


class DecoderCache(Protocol):
    def reorder(self, index: torch.Tensor, candidate: torch.Tensor | None = None) -> None:
        """Rows become rows[index] (index: LongTensor (R',), may repeat rows). With `candidate` (R',), new row r
        also appends candidate[r] of the last `decode_candidates` call on its source row."""
        ...


class DecoderModel(Protocol):
    """What the decoding loops need from a model (`safepretrain.train.model.Transformer` implements it)."""

    @property
    def max_seq_len(self) -> int:
        """Longest prompt + generation the model accepts (prompts are cut from the left to fit)."""
        ...

    @property
    def device(self) -> torch.device:
        """Where prompts, caches and the sampling generator live."""
        ...

    def new_cache(self, rows: int, max_len: int, candidates: int = 1) -> DecoderCache:
        """An empty cache for `rows` sequences of at most `max_len` tokens (prompt padding included), with
        room for `decode_candidates` of up to `candidates` tokens per row."""
        ...

    def prefill(self, tokens: torch.Tensor, attention_mask: torch.Tensor, cache: DecoderCache) -> torch.Tensor:
        """tokens (B, T) left-padded, attention_mask (B, T) bool (False = padding) → logits (B, V) for
        the token after each prompt. Positions are cumsum(mask) − 1, so padding shifts nothing."""
        ...

    def decode(self, tokens: torch.Tensor, cache: DecoderCache) -> torch.Tensor:
        """Append one token per row, tokens (B,) → logits (B, V) for the following token."""
        ...

    def decode_candidates(self, tokens: torch.Tensor, cache: DecoderCache) -> torch.Tensor:
        """N alternative next tokens per row, tokens (B, N) → logits (B, N, V): for each, what `decode` of that
        token alone would return. Nothing is appended until `cache.reorder(index, candidate)` picks one."""
        ...


@dataclass
class Generation:
    tokens: list[int]  # generated tokens only; a stop token is not included (the tag is, if emitted)
    logprob: float  # sum of log p(token) under the model (temperature 1), the stop token's included
    stopped: str  # "stop" (a stop id), "length" (max_new_tokens) or "tag" (SafeBeam short-circuit)
    short_circuited: bool  # SafeBeam kept the tag as a candidate and ended the response there
    tag_emitted: bool  # the tag appears among `tokens`


def left_pad(prompts: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """prompts → tokens (B, T), mask (B, T) with padding on the left, so last tokens line up."""
    width = max(len(p) for p in prompts)
    tokens = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.bool)
    for r, p in enumerate(prompts):
        tokens[r, width - len(p):] = torch.tensor(p, dtype=torch.long)
        mask[r, width - len(p):] = True
    return tokens.to(device), mask.to(device)


def fit_prompts(model: DecoderModel, prompts: list[list[int]], max_new_tokens: int) -> list[list[int]]:
    """Keep each prompt's last `max_seq_len - max_new_tokens` tokens (the end holds the chat turn)."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens} must be at least 1")
    room = model.max_seq_len - max_new_tokens
    if room < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens} leaves no room for a prompt in "
                         f"max_seq_len={model.max_seq_len}")
    if any(len(p) == 0 for p in prompts):
        raise ValueError("empty prompt: every prompt needs at least one token (e.g. BOS)")
    return [list(p[-room:]) for p in prompts]
