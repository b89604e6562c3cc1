"""What every evaluation task and attack reads: the model under test with its tokenizer, judges, settings, seed and
prompt sets (`EvalContext`); what a task returns (`TaskResult`); and how a prompt reaches the model at a stage
(`format_prompt`: completion-style for base models, chat for tuned ones, papers §7.1) and is decoded (`generate`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from safepretrain.config import EvalConfig
from safepretrain.data.chat import chat_prompt_ids, completion_prompt
from safepretrain.data.shards import TokenShard
from safepretrain.data.tokenizer import TextTokenizer
from safepretrain.eval.decoders import Generation, decode, decoder_settings
from safepretrain.eval.prompts import EvalPrompts
from safepretrain.rundir import CHAT_STAGES


@dataclass
class EvalContext:
    model: torch.nn.Module
    tok: TextTokenizer
    judge: object  # the primary judge (eval/judges)
    cfg: EvalConfig
    seed: int
    prompts: EvalPrompts
    val: TokenShard
    cache: dict = field(default_factory=dict)
    judges: dict = field(default_factory=dict)  # every judge by name, primary first; empty = only `judge`
    reference: torch.nn.Module | None = None  # the model this stage was trained from (IFT: its base model), or None
    # `eval --prompts` streams: generative tasks decode and judge `chunk` prompts at a time and hand each chunk's
    # samples to progress(samples, done, total) (eval/tasks.py `_judged`); None (a study): every prompt in one call
    progress: Callable[[list[dict], int, int], None] | None = None
    chunk: int = 0

    def all_judges(self) -> dict:
        return self.judges or {getattr(self.judge, "name", "judge"): self.judge}


@dataclass
class TaskResult:
    rows: list[dict]  # aggregate metric rows with CIs
    samples: list[dict] = field(default_factory=list)  # what the model did, per example (samples.jsonl)
    items: list[dict] = field(default_factory=list)  # {"metric", "item", "value"} for paired statistics


def format_prompt(tok: TextTokenizer, text: str, stage: str) -> list[int]:
    """Token ids of `text` as the model at `stage` is prompted: chat for tuned models, completion for base."""
    if stage in CHAT_STAGES:
        return chat_prompt_ids(tok, text)
    return tok.encode(completion_prompt(text))


def generate(ctx: EvalContext, prompts: list[str], stage: str, decoder: str) -> list[Generation]:
    return generate_ids(ctx, [format_prompt(ctx.tok, p, stage) for p in prompts], decoder)


def generate_ids(ctx: EvalContext, ids: list[list[int]], decoder: str) -> list[Generation]:
    """Decode from prompt token ids with the decoder's settings from `eval` (the decoder cuts each prompt from the
    left so that `max_new_tokens` still fit the model: `decoders.fit_prompts`). Decoding is a pure function of the
    model, the prompts, the settings and the seed, so a repeat request for the same prompts on the same model (the
    alignment depth's k = 0 is plain ASR) is answered from `ctx.cache`."""
    c = ctx.cfg
    key = ("generate", decoder, tuple(map(tuple, ids)))
    if key not in ctx.cache:
        ctx.cache[key] = decode(decoder, ctx.model, ids, settings=decoder_settings(decoder, c),
                                max_new_tokens=c.max_new_tokens, stop_ids={ctx.tok.eos_id, ctx.tok.end_id},
                                pad_id=ctx.tok.pad_id, tag_id=ctx.tok.tag_id, seed=ctx.seed, batch_size=c.batch_size)
    return ctx.cache[key]
