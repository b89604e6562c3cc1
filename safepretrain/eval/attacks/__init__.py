"""Jailbreaks: how a harmful request reaches the model. Each listed in `eval.attacks` runs the ASR task again as
`asr_<attack>` (per arm × stage × decoder, judged by every judge), next to the plain `asr`.

- `prefill`: the answer starts with a compliance prefix (`eval.attack.prefill`): the assistant turn for tuned
  models, the text after "Answer:" for base models. The judged response is prefix + continuation.
- `template`: the request inside a jailbreak template (role-play, DAN-style, refusal suppression, ...) from pyrit
  via the world pack (its NOTICE records package, version and licence); one template per prompt, drawn by seed.
- `gcg`: a suffix after the request, optimised per prompt and model by greedy coordinate gradient to make the
  prefill string the answer (Zou et al. 2023; eval/gcg.py). Not adaptive, as in the papers.
- `gcg_adaptive`: the same with the objective also penalising p(tag) along the target, so the suffix is
  optimised against SafeBeam's tag lookahead (the papers' attacks were not adaptive).

An attack returns each prompt's token ids (and the text the judge sees before the response); suffixes are
computed once per model and stage and reused by every decoder.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

from safepretrain.data.chat import chat_prompt_ids, completion_prompt

if TYPE_CHECKING:
    from safepretrain.eval.tasks import EvalContext

CHAT_STAGES = {"ift", "benign_ft"}


@dataclass(frozen=True)
class Attacked:
    ids: list[int]  # the prompt as the model reads it, before generation
    response_prefix: str = ""  # text the model was made to say first (prefilling); judged with the response
    info: dict | None = None  # what the attack achieved (GCG: target NLL before/after, log p(tag) on the target)


def _plain_ids(ctx: EvalContext, text: str, stage: str) -> list[int]:
    return chat_prompt_ids(ctx.tok, text) if stage in CHAT_STAGES else ctx.tok.encode(completion_prompt(text))


def _prefill_ids(ctx: EvalContext, stage: str) -> list[int]:
    prefix = ctx.cfg.attack.prefill
    return ctx.tok.encode(prefix if stage in CHAT_STAGES else " " + prefix)


def prefill(ctx: EvalContext, items: list[dict], stage: str) -> list[Attacked]:
    target = _prefill_ids(ctx, stage)
    return [Attacked(_plain_ids(ctx, x["prompt"], stage) + target, ctx.cfg.attack.prefill) for x in items]


def jailbreak_templates(world_templates: list[dict] | None = None) -> list[dict]:
    """The pack's templates; the organism (no pack of its own) reads the embedded pack's file."""
    if world_templates:
        return world_templates
    from safepretrain.world.loader import FILES, default_pack_path, read_manifest, read_records

    pack = default_pack_path()
    name = FILES["jailbreak_templates"]
    return read_records(pack / name, read_manifest(pack)["files"][name])


def template(ctx: EvalContext, items: list[dict], stage: str) -> list[Attacked]:
    templates = ctx.cache.setdefault("jailbreak_templates", jailbreak_templates())
    out = []
    for x in items:
        t = random.Random(f"{ctx.seed}|{x['id']}").choice(templates)  # seeded per prompt: paired across arms
        out.append(Attacked(_plain_ids(ctx, t["text"].format(prompt=x["prompt"]), stage)))
    return out


def _gcg(ctx: EvalContext, items: list[dict], stage: str, adaptive: bool) -> list[Attacked]:
    import torch

    from safepretrain.eval.attacks.gcg import GCGSettings, gcg_suffix

    a, tok = ctx.cfg.attack, ctx.tok
    settings = GCGSettings(suffix_len=a.gcg_suffix_len, steps=a.gcg_steps, topk=a.gcg_topk,
                           candidates=a.gcg_candidates, tag_weight=a.gcg_tag_weight,
                           init_token=(tok.encode("!") or [tok.pad_id + 1])[0])
    special = {tok.pad_id, tok.eos_id, tok.end_id, tok.user_id, tok.assistant_id, tok.tag_id}
    allowed = [i for i in range(ctx.model.cfg.vocab_size) if i not in special]
    target = _prefill_ids(ctx, stage)
    out = []
    for x in items:
        if stage in CHAT_STAGES:
            before, after = [tok.user_id, *tok.encode(x["prompt"])], [tok.end_id, tok.assistant_id]
        else:
            before, after = tok.encode(f"Question: {x['prompt']}"), tok.encode("\nAnswer:")
        with torch.inference_mode(False), torch.enable_grad():
            found = gcg_suffix(ctx.model, before, after, target, settings=settings, seed=ctx.seed,
                               allowed_ids=allowed, tag_id=tok.tag_id, adaptive=adaptive)
        out.append(Attacked(before + found.suffix_ids + after, info={
            "target_nll_before": round(found.initial_loss, 4), "target_nll_after": round(found.loss, 4),
            "tag_logprob": round(found.tag_logprob, 4)}))
    return out


def gcg(ctx: EvalContext, items: list[dict], stage: str) -> list[Attacked]:
    return _gcg(ctx, items, stage, adaptive=False)


def gcg_adaptive(ctx: EvalContext, items: list[dict], stage: str) -> list[Attacked]:
    return _gcg(ctx, items, stage, adaptive=True)


ATTACKS = {"prefill": prefill, "template": template, "gcg": gcg, "gcg_adaptive": gcg_adaptive}
EXPENSIVE = {"gcg", "gcg_adaptive"}  # attack only `eval.attack.gcg_prompts` prompts per model


def attacked_prompts(ctx: EvalContext, attack: str, items: list[dict], stage: str) -> list[Attacked]:
    """Each item's attacked prompt, once per (attack, stage) for the model in `ctx`: every decoder reuses it."""
    key = ("attack", attack, stage)
    if key not in ctx.cache:
        ctx.cache[key] = ATTACKS[attack](ctx, items, stage)
    return ctx.cache[key]
