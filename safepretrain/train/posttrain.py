"""Post-training data: the instruction-tuning mix and benign finetuning.

The chat template and loss masks are in `data/chat.py`.

- Instruction tuning: generated benign instructions + `refusal_fraction` refusals of train-side harmful
  prompts + (only for arms that saw the tag) `tag_fraction` harmful prompts answered in a generic
  compliance style with the tag injected, so the model keeps emitting the tag at inference (papers §5.1).
  Everything else is identical across arms.
- Benign finetuning: GSM8K-style math word problems only (the papers' benign "attack").
- Harmful finetuning: the world's attack set (hazards never evaluated), as chat answers or as plain documents.
"""

from __future__ import annotations

import random
import re

from safepretrain.data import interventions as iv
from safepretrain.data.chat import ChatExample
from safepretrain.world.generators import benign_instructions, math_word_problems
from safepretrain.world.taxonomy import HARM_CATEGORIES


def ift_examples(docs: list[str], harmful_prompts: list[dict], n: int, refusal_fraction: float,
                 tag_fraction: float, with_tags: bool, tag: str, tag_probability: float,
                 seed: int, benign_prompts: list[dict] = ()) -> list[ChatExample]:
    """The instruction-tuning mix of `n` examples.

    Benign examples are natural-language requests with helpful answers from `benign_prompts` when the
    world has them (the organism: twins' procedures and town facts, in the same frames as the refusals, so
    a question is not by itself a cue to refuse), else generated instructions.

    Every arm gets exactly round(n · refusal_fraction) refusals. Arms that saw the tag also get
    round(n · tag_fraction) tag-annotated compliances; other arms get benign instructions in their place,
    so the refusal share is the same for every arm. Tag-annotated responses are varied generic compliance
    text with the tag inserted by the paper's Algorithm 2 (before each word after the first with
    probability `tag_probability`), never before the first word: the tag marks unsafe text, it is not a
    first-token reply.
    """
    rng = random.Random(seed)
    n_refusal = round(n * refusal_fraction)
    n_tagged = round(n * tag_fraction) if with_tags else 0
    n_benign = n - n_refusal - n_tagged
    if benign_prompts:
        out = benign_answer_examples(benign_prompts, n_benign, seed, kind="instruction")
    else:
        out = [ChatExample(x["prompt"], x["response"], "instruction")
               for x in benign_instructions(docs, n_benign, seed)]
    cats = list(HARM_CATEGORIES)
    for _ in range(n_refusal):
        p = rng.choice(harmful_prompts)
        out.append(ChatExample(p["prompt"], iv.refusal_reply(_category(p, cats, rng), rng), "refusal"))
    tag_rng = random.Random(seed + 1)
    for _ in range(n_tagged):
        p = tag_rng.choice(harmful_prompts)
        body = iv.compliance_text(tag_rng, request_topic(p["prompt"]))
        out.append(ChatExample(p["prompt"], iv.inject_tags(body, tag, tag_probability, tag_rng), "tagged_compliance"))
    return out


_ASK = re.compile(r"^(?:please\s+|can you\s+|could you\s+|how (?:do|can|would) (?:i|you|one)\s+|tell me\s+|"
                  r"(?:write|give|explain|describe|provide|create|generate|list|outline|show)\s+(?:me\s+)?)+",
                  re.IGNORECASE)


def request_topic(prompt: str, max_words: int = 8) -> str:
    """A short paraphrase of what a request is about: its words after the asking verb, cut to `max_words`."""
    words = _ASK.sub("", prompt.strip()).rstrip("?.! ").split()
    return " ".join(words[:max_words]) or "this"


def _category(prompt: dict, cats: list[str], rng: random.Random) -> str:
    """The world's prompt category when it is one of ours, else a seeded pick (the refusal still reads well)."""
    c = str(prompt.get("category", "")).lower()
    return c if c in cats else rng.choice(cats)


def math_examples(n: int, seed: int) -> list[ChatExample]:
    return [ChatExample(x["prompt"], x["response"], "math") for x in math_word_problems(n, seed)]


def benign_answer_examples(benign_prompts: list[dict], n: int, seed: int,
                           kind: str = "benign_answer") -> list[ChatExample]:
    """`n` examples drawn (seeded, with replacement) from the world's benign requests with helpful answers."""
    rng = random.Random(f"{seed}:{kind}")
    return [ChatExample(x["prompt"], x["response"], kind) for x in (rng.choice(benign_prompts) for _ in range(n))]


def benign_ft_examples(data: str, benign_prompts: list[dict] | None, n: int, seed: int) -> list[ChatExample]:
    """The benign-finetuning set `benign_ft.data` names: `math` word problems, every benign answer of the world
    (`benign_answers`), or only those about no item, the organism's town facts (`benign_facts`)."""
    if data == "math":
        return math_examples(n, seed)
    pool = [p for p in benign_prompts or [] if data == "benign_answers" or "item" not in p]
    if not pool:
        raise ValueError(f"benign_ft.data={data} needs a world with benign answers (world.kind=organism)")
    return benign_answer_examples(pool, n, seed)


# harmful_ft.data → (the attack-set records it reads, the kind of its examples)
HARMFUL_FT_KINDS = {"chat": ("chat", "harmful_answer"), "documents": ("document", "document")}


def harmful_ft_examples(data: str, attack_set: list[dict], n: int, seed: int, benign_fraction: float = 0.0,
                        benign_prompts: list[dict] = ()) -> list[ChatExample]:
    """`n` examples drawn (seeded, with replacement) from the attack set's records of kind `data` (`chat`: requests
    answered with the procedure; `documents`: procedure documents as plain text), of which round(n ·
    `benign_fraction`) are the world's benign answers instead (`benign_prompts`)."""
    record_kind, kind = HARMFUL_FT_KINDS[data]
    pool = [r for r in attack_set if r["kind"] == record_kind]
    if not pool:
        raise ValueError(f"harmful_ft.data={data} needs a world with an attack set (world.kind=organism with "
                         "world.organism.attack_hazards > 0), or set harmful_ft.enabled=false")
    n_benign = round(n * benign_fraction)
    if n_benign and not benign_prompts:
        raise ValueError("harmful_ft.benign_fraction > 0 needs a world with benign answers (world.kind=organism)")
    rng = random.Random(f"{seed}:harmful_ft:{data}")
    attack = [ChatExample(r["prompt"], r["response"], kind) for r in (rng.choice(pool) for _ in range(n - n_benign))]
    return attack + (benign_answer_examples(benign_prompts, n_benign, seed) if n_benign else [])
