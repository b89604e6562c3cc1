"""Decoding: seeded top-k sampling, plain beam search and SafeBeam (papers §6), batched, KV-cached.

The selection rules are pure functions over tensors (`sample_next_token`, `safebeam_select`); the
loops (`generate_topk`, and `_beam_batch` behind `beam_search` / `safe_beam_search`) only move tokens,
caches and bookkeeping around them. Any model implementing `DecoderModel` works, so tests drive the
loops with a hand-built toy. `decode` runs a decoder by name from `DECODERS` (the eval entry point).
SafeBeam's algorithm: beam.py.

Every decoder is a function with the same keyword arguments, registered with its settings model and the section of
`eval` it reads (`registry.py`); adding one is a file plus a `DECODERS.register` line.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from safepretrain.config.evaluation import SafeBeamConfig, TopKConfig
from safepretrain.eval.decoders import beam, topk
from safepretrain.eval.decoders.base import DecoderCache, DecoderModel, Generation, fit_prompts, left_pad
from safepretrain.eval.decoders.beam import beam_search, safe_beam_search, safebeam_select
from safepretrain.eval.decoders.topk import generate_topk, sample_next_token
from safepretrain.registry import Registry

__all__ = ["DECODERS", "DecoderCache", "DecoderModel", "Generation", "beam_search", "decode", "fit_prompts",
           "generate_topk", "left_pad", "safe_beam_search", "safebeam_select", "sample_next_token"]

DECODERS: Registry = Registry("decoder")
DECODERS.register("topk", topk.decode, settings=TopKConfig, section="topk")
# the control of SafeBeam: its width and pick rule (`eval.safebeam`), nothing dropped, the tag an ordinary token
DECODERS.register("beam", beam.decode_beam, settings=SafeBeamConfig, section="safebeam")
DECODERS.register("safebeam", beam.decode_safebeam, settings=SafeBeamConfig, section="safebeam", needs_tag=True)


def decode(name: str, model: DecoderModel, prompts: list[list[int]], *, settings: BaseModel | None = None,
           max_new_tokens: int, stop_ids: set[int], pad_id: int, tag_id: int | None, seed: int,
           batch_size: int) -> list[Generation]:
    """Run decoder `name` from DECODERS on `prompts` (one Generation each, in order); `settings` default to the
    decoder's settings model's defaults. Prompts are cut from the left to leave `max_new_tokens` (`fit_prompts`).

    Raises ValueError for an unknown name, and for "safebeam" when `tag_id` is None.
    """
    if name not in DECODERS:
        raise ValueError(f"unknown decoder {name!r}; known decoders: {', '.join(sorted(DECODERS))}")
    entry = DECODERS[name]
    return entry.build(model, prompts, settings=settings if settings is not None else entry.settings(),
                       max_new_tokens=max_new_tokens, stop_ids=stop_ids, pad_id=pad_id, tag_id=tag_id, seed=seed,
                       batch_size=batch_size)


def decoder_settings(name: str, eval_cfg: Any) -> BaseModel | None:
    """The settings decoder `name` runs with under an `eval` config section."""
    return DECODERS[name].settings_from(eval_cfg)
