"""What every attack returns, and the compliance prefix two of them use."""

from __future__ import annotations

from dataclasses import dataclass

from safepretrain.eval.context import EvalContext
from safepretrain.rundir import CHAT_STAGES


@dataclass(frozen=True)
class Attacked:
    ids: list[int]  # the prompt as the model reads it, before generation
    response_prefix: str = ""  # text the model was made to say first (prefilling); judged with the response
    info: dict | None = None  # what the attack achieved (GCG: target NLL before/after, log p(tag) on the target)


def prefill_ids(ctx: EvalContext, stage: str) -> list[int]:
    """The compliance prefix (`eval.attack.prefill`) as the answer's first tokens: the assistant turn of a tuned
    model, the text after "Answer:" of a base model."""
    prefix = ctx.cfg.attack.prefill
    return ctx.tok.encode(prefix if stage in CHAT_STAGES else " " + prefix)
