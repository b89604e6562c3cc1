"""Jailbreaks: how a harmful request reaches the model. Each listed in `eval.attacks` runs the ASR task again as
`asr_<attack>` (per arm × stage × decoder, judged by every judge), next to the plain `asr`.

- `prefill`: the answer starts with a compliance prefix (`eval.attack.prefill`): the assistant turn for tuned
  models, the text after "Answer:" for base models. The judged response is prefix + continuation.
- `template`: the request inside a jailbreak template (role-play, DAN-style, refusal suppression, ...) from pyrit
  via the world pack (its NOTICE records package, version and licence); one template per prompt, drawn by seed.
- `gcg`: a suffix after the request, optimised per prompt and model by greedy coordinate gradient to make the
  prefill string the answer (Zou et al. 2023; gcg.py). Not adaptive, as in the papers.
- `gcg_adaptive`: the same with the objective also penalising p(tag) along the target, so the suffix is
  optimised against SafeBeam's tag lookahead (the papers' attacks were not adaptive).
- `in_context`: the hazard's true procedure given in the prompt as a retrieved document, then the request (does an
  arm that never learned the procedure use one it is handed?; organism only).

An attack is a function `(ctx, items, stage) -> list[Attacked]` (each prompt's token ids, and the text the judge sees
before the response), registered in `ATTACKS` with its settings (`eval.attack`); adding one is a file plus a
`register` line. Attacked prompts are computed once per model and stage and reused by every decoder.
"""

from __future__ import annotations

from safepretrain.config.evaluation import AttackConfig
from safepretrain.eval.attacks.base import Attacked
from safepretrain.eval.attacks.gcg import gcg, gcg_adaptive
from safepretrain.eval.attacks.in_context import in_context, needs_references
from safepretrain.eval.attacks.prefill import prefill
from safepretrain.eval.attacks.template import jailbreak_templates, template
from safepretrain.eval.context import EvalContext
from safepretrain.registry import Registry

__all__ = ["ATTACKS", "Attacked", "attacked_prompts", "attack_items", "jailbreak_templates"]

ATTACKS: Registry = Registry("attack")
ATTACKS.register("prefill", prefill, settings=AttackConfig, section="attack")
ATTACKS.register("template", template, settings=AttackConfig, section="attack")
# GCG optimises one suffix per prompt and model: it attacks only `eval.attack.gcg_prompts` prompts
ATTACKS.register("gcg", gcg, settings=AttackConfig, section="attack", max_prompts="gcg_prompts")
ATTACKS.register("gcg_adaptive", gcg_adaptive, settings=AttackConfig, section="attack", max_prompts="gcg_prompts")
ATTACKS.register("in_context", in_context, check=needs_references)


def attack_items(ctx: EvalContext, attack: str, items: list[dict]) -> list[dict]:
    """The prompts `attack` runs on: all of them, or the first `max_prompts` (an attack setting) of an expensive
    attack."""
    entry = ATTACKS[attack]
    limit = entry.options.get("max_prompts")
    return items[:getattr(entry.settings_from(ctx.cfg), limit)] if limit else items


def attacked_prompts(ctx: EvalContext, attack: str, items: list[dict], stage: str) -> list[Attacked]:
    """Each item's attacked prompt, once per (attack, stage) for the model in `ctx`: every decoder reuses it."""
    key = ("attack", attack, stage)
    if key not in ctx.cache:
        ctx.cache[key] = ATTACKS[attack].build(ctx, items, stage)
    return ctx.cache[key]
