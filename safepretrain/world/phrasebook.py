"""The phrasebook shared by the worlds and the data interventions: the template tables
(safepretrain/assets/intervention_templates.yaml) and the two generic replies built from them, a refusal and a
compliance-style answer. It lives in world/ because the organism's refusal labels are written with it, and the
data interventions (a layer above) read it from here.
"""

from __future__ import annotations

import functools
import random
from importlib import resources

import yaml


@functools.lru_cache(maxsize=1)
def templates() -> dict:
    """The template tables (safepretrain/assets/intervention_templates.yaml)."""
    text = resources.files("safepretrain.assets").joinpath("intervention_templates.yaml").read_text()
    return yaml.safe_load(text)


def compliance_text(rng: random.Random, topic: str = "this") -> str:
    """A generic compliance-style answer (no working instructions) for tag-annotated IFT examples:
    an opening about `topic`, three to five steps in one step style, and a closing, all drawn at random."""
    c = templates()["compliance"]
    style = rng.choice(c["step_style"])
    steps = rng.sample(c["step"], rng.randint(3, 5))
    lines = [frame.format(s=s, S=s[0].upper() + s[1:]) for frame, s in zip(style, steps)]
    return " ".join(x for x in [rng.choice(c["opening"]).format(topic=topic), *lines, rng.choice(c["closing"])] if x)


def refusal_reply(category: str, rng: random.Random) -> str:
    """An assistant refusal for a harmful prompt (instruction-tuning refusal examples)."""
    r = templates()["refusal"]
    parts = (rng.choice(r["acknowledge"]), rng.choice(r["decline"]), r["harm"][category],
             r["alternative"][category], rng.choice(r["close"]))
    return " ".join(x for x in parts if x)
