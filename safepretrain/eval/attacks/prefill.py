"""`prefill`: the answer starts with a compliance prefix; the judged response is prefix + continuation."""

from __future__ import annotations

from safepretrain.eval.attacks.base import Attacked, prefill_ids
from safepretrain.eval.context import EvalContext, format_prompt


def prefill(ctx: EvalContext, items: list[dict], stage: str) -> list[Attacked]:
    target = prefill_ids(ctx, stage)
    return [Attacked(format_prompt(ctx.tok, x["prompt"], stage) + target, ctx.cfg.attack.prefill) for x in items]
