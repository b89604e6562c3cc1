"""Content-matched harmful/benign prompts and reference answers for the judge-free likelihood metrics.

Data: `safepretrain/assets/contrast_set.yaml` (the only place harmful-sounding text lives).

- A *topic* is a (harmful behaviour, benign twin) pair of short verb phrases of similar length, e.g.
  "get into a neighbour's wifi without permission" / "get into my own wifi after a password reset".
- A *frame* is a request template with one `{x}` slot ("How do I {x}?"). A `ContrastPair` applies one frame
  to both phrases of one topic, so its two prompts share frame, punctuation and roughly the length and
  differ only in the behaviour phrase.
- *Neutral* prompts are everyday requests in the same frames (negatives for harm specificity).
- `compliance_reference` writes a generic compliance-style answer that restates the ask (a style only,
  never working instructions); `refusal_references` are held-out refusal paraphrases that share no word
  4-gram with the training refusal text.

Splits: frames marked `heldout` and a fixed, hash-chosen quarter of the topics are held out. "dev" pairs
use neither; "test" pairs use a held-out topic or a held-out frame; "all" is both.

Every function is a pure function of its arguments (and the YAML): the same (n, seed, split) always
gives the same prompts, so per-prompt values can be paired across arms and seeds by `ContrastPair.id`.
"""

from __future__ import annotations

import functools
import hashlib
import random
import re
from dataclasses import dataclass
from importlib import resources

import yaml

SPLITS = ("all", "dev", "test")
GENERIC_ASK = "do this"  # the ask in prompt-independent references


@dataclass(frozen=True)
class ContrastPair:
    id: str  # "<topic>/<frame>": stable across seeds, so values pair across arms and seeds
    harmful: str  # frame applied to the harmful behaviour
    benign: str  # the same frame applied to the benign twin
    frame: str  # frame id
    topic: str  # topic id
    category: str  # harm category of the harmful side (taxonomy.HARM_CATEGORIES)
    harmful_behaviour: str
    benign_behaviour: str
    split: str  # "dev" | "test"
    harmful_reference: str | None = None  # the true compliant answer of each side, when the world knows it
    benign_reference: str | None = None  # (the organism); the likelihood metrics then score these


@functools.lru_cache(maxsize=1)
def contrast_set() -> dict:
    """The parsed and validated contrast_set.yaml."""
    text = resources.files("safepretrain.assets").joinpath("contrast_set.yaml").read_text()
    data = yaml.safe_load(text)
    for f in data["frames"]:
        if f["text"].count("{x}") != 1:
            raise ValueError(f"frame {f['id']!r} must contain exactly one {{x}}")
    for key in ("frames", "topics"):
        ids = [x["id"] for x in data[key]]
        if len(ids) != len(set(ids)):
            raise ValueError(f"duplicate {key} ids in contrast_set.yaml")
    return data


def _int_seed(*parts: object) -> int:
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little")


def topic_split(topic_id: str) -> str:
    """"test" for a fixed quarter of the topics (by hash of the id, so adding topics moves none)."""
    return "test" if _int_seed("contrast-split", topic_id) % 4 == 0 else "dev"


def _pair_split(topic: dict, frame: dict) -> str:
    return "test" if frame.get("heldout") or topic_split(topic["id"]) == "test" else "dev"


def _round_robin(keys: list[str], cells: dict[str, list], rng: random.Random) -> list:
    """Topics in shuffled order, each topic's cells shuffled; round r takes the r-th cell of every topic,
    so any prefix covers as many topics as possible before a topic repeats."""
    order = list(keys)
    rng.shuffle(order)
    for k in order:
        rng.shuffle(cells[k])
    out, r = [], 0
    while any(r < len(cells[k]) for k in order):
        out.extend(cells[k][r] for k in order if r < len(cells[k]))
        r += 1
    return out


def contrast_pairs(n: int | None = None, seed: int = 0, split: str = "all") -> list[ContrastPair]:
    """Up to `n` pairs (None = all), deterministic in (n, seed, split); topics are spread evenly."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    data = contrast_set()
    cells: dict[str, list[ContrastPair]] = {}
    for t in data["topics"]:
        cells[t["id"]] = [
            ContrastPair(id=f"{t['id']}/{f['id']}", harmful=f["text"].format(x=t["harmful"]),
                         benign=f["text"].format(x=t["benign"]), frame=f["id"], topic=t["id"],
                         category=t["category"], harmful_behaviour=t["harmful"], benign_behaviour=t["benign"],
                         split=_pair_split(t, f))
            for f in data["frames"]
            if split == "all" or _pair_split(t, f) == split
        ]
    pairs = _round_robin([k for k in cells if cells[k]], cells, random.Random(_int_seed("contrast", seed)))
    return pairs if n is None else pairs[:n]


def neutral_prompts(n: int | None = None, seed: int = 0) -> list[str]:
    """Up to `n` neutral requests (None = all): everyday phrases in the contrast frames, deterministic."""
    data = contrast_set()
    cells = {p: [f["text"].format(x=p) for f in data["frames"]] for p in data["neutral"]}
    prompts = _round_robin(list(cells), cells, random.Random(_int_seed("neutral", seed)))
    return prompts if n is None else prompts[:n]


@functools.lru_cache(maxsize=1)
def _frame_patterns() -> list[re.Pattern]:
    pats = []
    for f in contrast_set()["frames"]:
        before, after = f["text"].split("{x}")
        pats.append(re.compile(re.escape(before) + r"(.+?)" + re.escape(after) + r"$"))
    return pats


def behaviour_of(text: str) -> str:
    """The behaviour phrase of a framed prompt; other text comes back without its final punctuation."""
    text = text.strip()
    for pat in _frame_patterns():
        m = pat.match(text)
        if m:
            return m.group(1)
    text = text.rstrip("?.! ")
    return text[:1].lower() + text[1:] if text[:2] != "I " else text


_PRONOUNS = {"i": "you", "me": "you", "my": "your", "mine": "yours", "myself": "yourself", "i'm": "you're",
             "i've": "you've", "i'll": "you'll", "am": "are"}
_PRONOUN_RE = re.compile(r"\b(" + "|".join(re.escape(k) for k in sorted(_PRONOUNS, key=len, reverse=True)) + r")\b",
                         re.IGNORECASE)


def second_person(phrase: str) -> str:
    """First-person words → second person ("my own wifi" → "your own wifi")."""
    return _PRONOUN_RE.sub(lambda m: _PRONOUNS[m.group(1).lower()], phrase)


def compliance_reference(prompt_or_topic: str | None, rng: random.Random) -> str:
    """A generic compliance-style answer that restates the ask: an opening naming the behaviour, a
    three-step body and a closing, each drawn from `rng` (10 × 6 × 5 combinations).

    `prompt_or_topic` is a framed prompt (its behaviour phrase is extracted), a behaviour phrase, or None
    for a prompt-independent answer ("... how to do this."). The draws do not depend on the text, so two
    copies of one `random.Random` state give frame-matched answers for the two sides of a pair.
    """
    c = contrast_set()["compliance"]
    ask = GENERIC_ASK if prompt_or_topic is None else second_person(behaviour_of(prompt_or_topic))
    opening, body, closing = rng.choice(c["opening"]), rng.choice(c["body"]), rng.choice(c["closing"])
    return " ".join(x for x in (opening.format(x=ask), body, closing) if x)


def compliance_fragments() -> list[str]:
    """The fixed text of the compliance references (the template parts around `{x}`)."""
    c = contrast_set()["compliance"]
    return [part for key in ("opening", "body", "closing") for s in c[key] for part in s.split("{x}") if part.strip()]


def refusal_references() -> list[str]:
    """Held-out refusal paraphrases (no word 4-gram in common with the training refusal text)."""
    return list(contrast_set()["refusal"])
