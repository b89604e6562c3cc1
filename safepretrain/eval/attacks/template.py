"""`template`: the request inside a jailbreak template (role-play, DAN-style, refusal suppression, ...) from pyrit
via the world pack; one template per prompt, drawn by seed (paired across arms)."""

from __future__ import annotations

import random

from safepretrain.eval.attacks.base import Attacked
from safepretrain.eval.context import EvalContext, format_prompt
from safepretrain.world.loader import FILES, default_pack_path, read_manifest, read_records


def jailbreak_templates(world_templates: list[dict] | None = None) -> list[dict]:
    """The pack's templates; the organism (no pack of its own) reads the embedded pack's file."""
    if world_templates:
        return world_templates
    pack = default_pack_path()
    name = FILES["jailbreak_templates"]
    return read_records(pack / name, read_manifest(pack)["files"][name])


def template(ctx: EvalContext, items: list[dict], stage: str) -> list[Attacked]:
    templates = ctx.cache.setdefault("jailbreak_templates", jailbreak_templates())
    out = []
    for x in items:
        t = random.Random(f"{ctx.seed}|{x['id']}").choice(templates)  # seeded per prompt: paired across arms
        out.append(Attacked(format_prompt(ctx.tok, t["text"].format(prompt=x["prompt"]), stage)))
    return out
