"""The data interventions of Safety Pretraining, as seeded offline template generators.

- `rephrase`: score 1-3 documents become safe educational text in one of the paper's 7 styles
  (podcast, textbook, teacher script, TED talk, parent-child, friends, YouTube-Kids). Safe chunks are
  kept verbatim (core facts survive); every chunk the scorer flagged is replaced by a disclaimer that
  names the harm category, so each sentence is safe in isolation; the text ends positively.
- `refusal_dialogue`: score 4-5 documents become RefuseWeb-style dialogues: a request that paraphrases
  what the document is about (never a quote of it), and a polite refusal (acknowledge, decline, explain
  the harm, offer an alternative),
  with varied role names instead of "User"/"Assistant" (paper: names replaced at tokenization).
- `moral_education`: a refusal dialogue becomes a third-person, web-style moral lesson.
- `inject_tags`: the harmfulness tag before words with probability p (paper Alg. 2), only in unsafe text (the
  data stage does the same on token ids: `TextTokenizer.encode_tagged`; `tagged_text` rebuilds the text).

Every generator is a pure function of (document, seed): reruns produce identical data. An LLM backend
(OpenAI-compatible endpoint) replaces these templates in a later release behind the same signatures.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections import Counter
from dataclasses import dataclass

import numpy as np

from safepretrain.world.phrasebook import compliance_text, refusal_reply, templates
from safepretrain.world.taxonomy import STOPWORDS

__all__ = ["WHITESPACE", "Routed", "compliance_text", "doc_rng", "inject_tags", "moral_education", "random_below",
           "refusal_dialogue", "refusal_reply", "rephrase", "request_subject", "tag_rng", "tagged_text", "templates",
           "topic_of"]

# Whitespace as the tokenizer's pre-tokenizer sees it: `\s` of the GPT-2 split regex that `tokenizers`' ByteLevel
# runs (Oniguruma, Unicode): \t \n \v \f \r, space, U+0085, and the Zs, Zl, Zp characters. It is Python's
# `str.isspace()` less U+001C..U+001F (information separators, which Python counts as space and the tokenizer as
# punctuation). A word is a maximal run of other characters, so every word end is a pre-token boundary of the
# tokenizer: tag injection on token ids (`TextTokenizer.encode_tagged`) then equals encoding the tagged text.
WHITESPACE = "\t\n\v\f\r \x85\xa0\u1680" + "".join(map(chr, range(0x2000, 0x200B))) + "\u2028\u2029\u202f\u205f\u3000"
_WORD = re.compile(f"[^{re.escape(WHITESPACE)}]+")

def doc_rng(doc_id: str, seed: int, purpose: str) -> random.Random:
    """A random stream that depends only on (document, seed, purpose), not on processing order."""
    digest = hashlib.sha256(f"{seed}:{purpose}:{doc_id}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "little"))


def inject_tags(text: str, tag: str, p: float, rng: random.Random) -> str:
    """Insert `tag` before each word after the first with probability `p` (paper Alg. 2).

    The tag is glued to the end of the previous word ("word<tag> next"), not surrounded by spaces:
    byte-level BPE would otherwise emit a separate space token before the special token, and SafeBeam's
    one-token lookahead reads p(tag | text so far) right after a word. Words are separated by `WHITESPACE`.

    This is the reference (chat examples use it); the data stage inserts the tag id into the encoded ids instead
    (`TextTokenizer.encode_tagged`): same draws, same decisions, the same ids as encoding this function's text.
    """
    ends = [m.end() for m in _WORD.finditer(text)]
    pieces, cursor = [], 0
    for end in ends[:-1]:  # a decision for every word after the first, made at its predecessor's end
        if rng.random() < p:  # cut only where a tag goes: same draws, same text, fewer slices
            pieces += (text[cursor:end], tag)
            cursor = end
    pieces.append(text[cursor:])
    return "".join(pieces)


def tag_rng(source_id: str, seed: int) -> random.Random:
    """The draws of the tags of one `tagged` document."""
    return doc_rng(source_id, seed, "tag")


def tagged_text(record: dict, tag: str, seed: int) -> str:
    """The tagged text of a `tagged` stream record (stored untagged; the data stage tags its ids, identically)."""
    return inject_tags(record["text"], tag, record["tag_probability"], tag_rng(record["source_id"], seed))


def random_below(rngs: list[random.Random], counts: list[int], p: float) -> np.ndarray:
    """`[rng.random() < p for _ in range(n)]` for each (rng, n), concatenated, drawn in bulk: bit for bit the same
    draws, and each rng left in the same state. CPython's `random()` is (a >> 5, b >> 6) of two successive 32-bit
    outputs a, b scaled by 2**-53, and `getrandbits(64 n)` returns 2n successive outputs, the first in the lowest
    bits, so the little-endian bytes of one `getrandbits` call are the words a, b, a, b, ... in draw order."""
    words = np.frombuffer(b"".join([rng.getrandbits(64 * n).to_bytes(8 * n, "little") for rng, n in zip(rngs, counts)
                                    if n]), dtype="<u4")
    a, b = (words[0::2] >> 5).astype(np.float64), (words[1::2] >> 6).astype(np.float64)
    return (a * 67108864.0 + b) * (1.0 / 9007199254740992.0) < p


def topic_of(text: str, k: int = 3) -> str:
    """A neutral topic phrase: the most frequent content words of the safe part of a text."""
    words = [w.lower().strip(".,;:!?\"'()[]") for w in text.split()]
    counts = Counter(w for w in words if len(w) > 3 and w.isalpha() and w not in STOPWORDS)
    top = [w for w, _ in counts.most_common(k)]
    return ", ".join(top) if top else "everyday life"


@dataclass(frozen=True)
class Routed:
    """What the scorer said about a document, as the generators need it."""

    doc_id: str
    text: str
    score: int
    chunk_scores: list[int]
    chunks: list[str]
    category: str
    subject: str | None = None  # what the document is about (the organism's item name), when the world knows


def rephrase(doc: Routed, seed: int) -> tuple[str, str]:
    """Safe educational rewrite; returns (text, style)."""
    rng = doc_rng(doc.doc_id, seed, "rephrase")
    styles = templates()["rephrase_styles"]
    style = rng.choice(sorted(styles))
    t = styles[style]
    phrase = templates()["category_phrases"][doc.category]
    safe_text = " ".join(c for c, s in zip(doc.chunks, doc.chunk_scores) if s == 0)
    parts = [rng.choice(t["intro"]).format(topic=topic_of(safe_text) if safe_text else phrase, n=rng.randint(1, 12))]
    flagged_run = False
    for chunk, score in zip(doc.chunks, doc.chunk_scores):
        if score == 0:
            parts.append(chunk)
            flagged_run = False
        elif not flagged_run:  # one disclaimer per run of flagged chunks
            parts.append(rng.choice(t["sensitive"]).format(category=phrase))
            flagged_run = True
    parts.append(rng.choice(t["outro"]))
    return "\n\n".join(parts), style


def request_subject(doc: Routed) -> str:
    """What a refusal dialogue's request asks about, paraphrased rather than quoted: the world's subject of
    the document when known, else the top content words of its worst chunk. Quoting the document made the
    request a verbatim copy of (often benign) text, which a model learns as a trigger."""
    if doc.subject:
        return doc.subject
    worst = max(range(len(doc.chunks)), key=lambda i: doc.chunk_scores[i])
    return topic_of(doc.chunks[worst], k=3).replace(", ", " and ", 1)


def refusal_dialogue(doc: Routed, seed: int) -> tuple[str, dict]:
    """RefuseWeb-style dialogue; returns (text, parts) where parts feed `moral_education`."""
    rng = doc_rng(doc.doc_id, seed, "refusal")
    r = templates()["refusal"]
    asker, helper = rng.choice(r["roles"])
    request = rng.choice(r["request"]).format(subject=request_subject(doc))
    reply = " ".join(
        x
        for x in (
            rng.choice(r["acknowledge"]),
            rng.choice(r["decline"]),
            r["harm"][doc.category],
            r["alternative"][doc.category],
            rng.choice(r["close"]),
        )
        if x
    )
    return f"{asker}: {request}\n{helper}: {reply}", {"category": doc.category, "helper": helper}


def moral_education(doc: Routed, seed: int) -> str:
    """Third-person moral lesson about the refusal, written like an ethics blog page."""
    rng = doc_rng(doc.doc_id, seed, "moral_ed")
    m = templates()["moral_education"]
    phrase = templates()["category_phrases"][doc.category]
    harm = templates()["refusal"]["harm"][doc.category]
    helper = rng.choice(m["helper"])
    title = rng.choice(m["title"]).format(category_title=phrase.title())
    body = rng.choice(m["body"]).format(
        category=phrase,
        helper=helper,
        helper_cap=helper[0].upper() + helper[1:],
        harm=harm,
        harm_lower=harm[0].lower() + harm[1:],
        alternative_3p=m["alternative_3p"][doc.category],
    )
    return f"# {title}\n\n{body}"
