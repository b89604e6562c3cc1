"""Near-duplicate detection by normalised word n-grams ("shingles").

Why: the world keeps train and eval disjoint. Harmful prompts that make training data (AdvBench,
Do-Not-Answer, harmful Q&A pairs, scorer labels) must not reappear, even reworded by case or
punctuation, in the eval sets (HarmBench, StrongREJECT). Containment of a candidate's shingles in a
reference text catches copies, near-copies and a prompt quoted inside a longer document.

Definitions (n = 5 words by default):
- ``normalize``: Unicode NFKC, lower case, punctuation and symbols replaced by spaces, whitespace collapsed;
- ``shingles``: the set of word n-grams of the normalised text; a text of fewer than n words gives one
  shingle made of all its words (an empty text gives none);
- containment of candidate c in reference r: |S_c ∩ S_r| / |S_c|.

``near_duplicates`` indexes the *candidates'* shingles (small: a few thousand prompts) and streams the
reference texts through that index once, so its cost is linear in the reference size
(5k candidates × 50k reference documents takes seconds) and its memory is bounded by the candidates.
"""

from __future__ import annotations

import re
import unicodedata
from collections import defaultdict
from collections.abc import Iterable

_NON_WORD = re.compile(r"[^\w\s]|_")
_SPACES = re.compile(r"\s+")

Shingle = tuple[str, ...]


def normalize(text: str) -> str:
    """NFKC, lower case, punctuation/symbols → space, collapsed whitespace."""
    text = unicodedata.normalize("NFKC", text).lower()
    return _SPACES.sub(" ", _NON_WORD.sub(" ", text)).strip()


def _shingles_of_words(words: list[str], n: int) -> set[Shingle]:
    if not words:
        return set()
    if len(words) < n:
        return {tuple(words)}
    return set(zip(*(words[i:] for i in range(n))))


def shingles(text: str, n: int = 5) -> set[Shingle]:
    """Word n-grams of the normalised text (one shingle of all words if shorter than n)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return _shingles_of_words(normalize(text).split(), n)


def _matches(candidates: list[str], reference: Iterable[str], n: int, threshold: float, stop_when_all: bool):
    """Yield (candidate index, reference index) for every near-duplicate pair (see ``near_duplicates``)."""
    cand_sh = [shingles(c, n) for c in candidates]
    index: dict[Shingle, list[int]] = defaultdict(list)
    by_norm: dict[str, list[int]] = defaultdict(list)
    for i, sh in enumerate(cand_sh):
        for s in sh:
            index[s].append(i)
        if sh:
            by_norm[normalize(candidates[i])].append(i)
    n_nonempty = sum(1 for sh in cand_sh if sh)
    found: set[int] = set()
    for r, ref in enumerate(reference):
        if stop_when_all and len(found) == n_nonempty:
            return  # every candidate is already a duplicate
        norm = normalize(ref)
        hits: dict[int, int] = defaultdict(int)
        for s in _shingles_of_words(norm.split(), n):
            for i in index.get(s, ()):
                hits[i] += 1
        matched = set(by_norm.get(norm, ())) | {i for i, k in hits.items() if k / len(cand_sh[i]) >= threshold}
        for i in sorted(matched):
            found.add(i)
            yield i, r


def near_duplicates(candidates: list[str], reference: Iterable[str], n: int = 5,
                    threshold: float = 0.5) -> set[int]:
    """Indices of candidates that are near-duplicates of at least one reference text.

    A candidate is a near-duplicate when its normalised text equals a reference's, or when the
    containment of its shingles in the best-matching single reference text is >= ``threshold``.
    Empty candidates (no words) are never reported.
    """
    return {i for i, _ in _matches(candidates, reference, n, threshold, stop_when_all=True)}


def near_duplicate_pairs(candidates: list[str], reference: list[str], n: int = 5,
                         threshold: float = 0.5) -> dict[int, set[int]]:
    """For each candidate that is a near-duplicate, the indices of all reference texts it duplicates."""
    pairs: dict[int, set[int]] = defaultdict(set)
    for i, r in _matches(candidates, reference, n, threshold, stop_when_all=False):
        pairs[i].add(r)
    return dict(pairs)


def dedupe(texts: list[str], n: int = 5, threshold: float = 0.5) -> list[int]:
    """Indices of the texts to keep: first occurrences, dropping later near-duplicates.

    Text j is dropped when an earlier kept text has the same normalised text, or when the containment
    of j's shingles in one earlier kept text is >= ``threshold`` (the same test as ``near_duplicates``,
    against the texts kept so far). Empty texts are dropped.
    """
    index: dict[Shingle, list[int]] = defaultdict(list)
    seen_norm: set[str] = set()
    keep: list[int] = []
    for j, text in enumerate(texts):
        norm = normalize(text)
        sh = _shingles_of_words(norm.split(), n)
        if not sh or norm in seen_norm:
            continue
        hits: dict[int, int] = defaultdict(int)
        for s in sh:
            for k in index.get(s, ()):
                hits[k] += 1
        if any(c / len(sh) >= threshold for c in hits.values()):
            continue
        keep.append(j)
        seen_norm.add(norm)
        for s in sh:
            index[s].append(j)
    return keep
