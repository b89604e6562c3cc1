"""Byte-level BPE trained on the data-stage output (HF `tokenizers`), with single special tokens.

The harmfulness tag and the chat markers are special tokens, so each is exactly one id: SafeBeam reads
the tag's next-token probability, and chat formatting never depends on how markers would be split.

Tag injection on ids (`TextTokenizer.encode_tagged`): the pre-tokenizer splits text at every change between
`WHITESPACE` and other characters, a special token splits it too, and BPE never merges across a split. So with
A ending in a non-space character and B starting with a space, encode(A + tag + B) = encode(A) + [tag id] +
encode(B) and encode(A + B) = encode(A) + encode(B): inserting the tag id after the token that ends a word gives
exactly the ids of the tagged text, without building that text or encoding it again.
"""

from __future__ import annotations

import hashlib
import itertools
import random
from collections.abc import Iterable
from functools import cache, cached_property
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from safepretrain.config.base import ASSISTANT, END, EOS, PAD, USER  # the one list of special tokens
from safepretrain.data.interventions import WHITESPACE, inject_tags, random_below


def special_tokens(tag: str) -> list[str]:
    """Fixed order, so ids 0..5 are the same for every tokenizer trained with the same tag."""
    return [EOS, PAD, USER, ASSISTANT, END, tag]


def train_tokenizer(texts: Iterable[str], vocab_size: int, min_frequency: int, tag: str) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=special_tokens(tag),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


@cache
def byte_decoder() -> dict[str, int]:
    """The byte-level alphabet (GPT-2 `bytes_to_unicode`) inverted: vocabulary character -> byte (printable
    Latin-1 bytes stand for themselves, the other 68 for 256 + their rank)."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs = bs[:]
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + len(cs) - 188)
    return {chr(c): b for b, c in zip(bs, cs)}


_WIDE_SPACES = [c.encode() for c in WHITESPACE if len(c.encode()) > 1]
_SPACE_HEADS = {e[:k] for e in _WIDE_SPACES for k in range(1, len(e))}  # a space character begun, not finished
_SPACE_TAILS = {e[k:] for e in _WIDE_SPACES for k in range(1, len(e))}  # a space character finished, begun before


def _char_len(lead: int) -> int:
    return 1 if lead < 0x80 else 2 if lead >> 5 == 6 else 3 if lead >> 4 == 14 else 4 if lead >> 3 == 30 else 1


def _is_cont(byte: int) -> bool:
    return 0x80 <= byte < 0xC0


def _classify(b: bytes) -> tuple[bool, bool, bool, bool]:
    """(starts with a space character, ends with a word character, ends with a space character, unsure) of one
    token's bytes. A token may hold part of a multi-byte character; it is `unsure` where that part could belong
    to a space character whose other bytes are in the next or previous token."""
    starts_space = ends_word = ends_space = unsure = False
    if not _is_cont(b[0]):  # a token that starts inside a character starts no word gap
        n = _char_len(b[0])
        if len(b) >= n:
            char = b[:n].decode("utf-8", "replace")
            starts_space = len(char) == 1 and char in WHITESPACE
        else:
            unsure = b in _SPACE_HEADS
    last = next((k for k in range(len(b) - 1, -1, -1) if not _is_cont(b[k])), None)
    if last is None:  # only continuation bytes: the character began in an earlier token
        unsure = unsure or b in _SPACE_TAILS
        ends_word = True  # harmless where the character goes on: the next token then starts inside it
    elif last + _char_len(b[last]) <= len(b):  # ends a character (else it ends inside one: no word end)
        char = b[last:last + _char_len(b[last])].decode("utf-8", "replace")
        ends_space = len(char) == 1 and char in WHITESPACE
        ends_word = not ends_space
    return starts_space, ends_word, ends_space, unsure


STARTS_SPACE, ENDS_WORD, ENDS_SPACE, UNSURE = 1, 2, 4, 8  # bits of `tag_flags`


def tag_flags(tok: Tokenizer) -> np.ndarray:
    """Per token id, bits: STARTS_SPACE (begins with a space character), ENDS_WORD (ends with a word character),
    ENDS_SPACE (ends with a space character), UNSURE (part of a multi-byte space character, or a special token:
    documents holding one are tagged as text and encoded, see `_classify`)."""
    flags = np.full(tok.get_vocab_size(with_added_tokens=True), UNSURE, dtype=np.uint8)
    decoder, added = byte_decoder(), tok.get_added_tokens_decoder()
    for token, i in tok.get_vocab(with_added_tokens=True).items():
        if i not in added:
            bits = _classify(bytes(decoder[c] for c in token))
            flags[i] = sum(bit for bit, on in zip((STARTS_SPACE, ENDS_WORD, ENDS_SPACE, UNSURE), bits) if on)
    return flags


class TextTokenizer:
    """The project's view of a trained tokenizer: encode/decode plus the special ids."""

    def __init__(self, tok: Tokenizer, tag: str):
        self.tok = tok
        self.tag = tag
        ids = {s: tok.token_to_id(s) for s in special_tokens(tag)}
        missing = [s for s, i in ids.items() if i is None]
        if missing:
            raise ValueError(f"tokenizer lacks special tokens {missing}; retrain it with this tag")
        self.eos_id, self.pad_id, self.user_id = ids[EOS], ids[PAD], ids[USER]
        self.assistant_id, self.end_id, self.tag_id = ids[ASSISTANT], ids[END], ids[tag]

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size()

    @property
    def sha256(self) -> str:
        """Fingerprint of the vocabulary, merges and special tokens (checkpoints record the one they learned)."""
        return hashlib.sha256(self.tok.to_str().encode()).hexdigest()

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tok.encode_batch(texts)]

    def token_bytes(self, token_id: int) -> bytes:
        """The exact bytes a token stands for (a special token: its text in UTF-8); one token may hold part of a
        UTF-8 character."""
        added = self.tok.get_added_tokens_decoder()
        if token_id in added:
            return added[token_id].content.encode("utf-8")
        decoder = byte_decoder()
        return bytes(decoder[c] for c in self.tok.id_to_token(token_id))

    @cached_property
    def tag_flags(self) -> np.ndarray:
        return tag_flags(self.tok)

    def encode_tagged(self, texts: list[str], rngs: list[random.Random], p: float) -> list[list[int]]:
        """The ids of `inject_tags(text, self.tag, p, rng)` for each text, made on the ids (paper Alg. 2: one
        draw `rng.random() < p` per word after the first, the tag after the previous word). One `encode_batch` of
        the untagged texts, word ends found from per-token flags, draws in bulk (`random_below`), tag ids
        inserted into the id lists. A document with an UNSURE token is tagged as text and encoded."""
        ids = self.encode_batch(texts)
        lens = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
        ends = np.cumsum(lens)
        starts = ends - lens
        flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int64, count=int(ends[-1]) if len(ids) else 0)
        f = self.tag_flags[flat]
        gap = (f[:-1] & ENDS_WORD).astype(bool) & (f[1:] & STARTS_SPACE).astype(bool)  # a word ends at token j
        inner = starts[(starts > 0) & (starts < len(flat))]
        gap[inner - 1] = False  # never across two documents
        cuts = np.flatnonzero(gap)
        doc = np.searchsorted(ends, cuts, side="right")
        per_doc = np.bincount(doc, minlength=len(ids))
        # the last word makes no decision: where trailing space made its end a gap, drop it
        trailing = np.zeros(len(ids), dtype=bool)
        nonempty = lens > 0
        trailing[nonempty] = (f[ends[nonempty] - 1] & ENDS_SPACE).astype(bool)
        keep = np.ones(len(cuts), dtype=bool)
        keep[(np.cumsum(per_doc) - 1)[trailing & (per_doc > 0)]] = False
        slow = np.unique(np.searchsorted(ends, np.flatnonzero(f & UNSURE), side="right"))
        if len(slow):
            keep &= ~np.isin(doc, slow)
        cuts, doc = cuts[keep], doc[keep]
        decisions = np.bincount(doc, minlength=len(ids))
        tagged = random_below(rngs, decisions.tolist(), p)
        doc = doc[tagged]
        at = (cuts[tagged] + 1 - starts[doc]).tolist()
        tag_id = self.tag_id
        for d, i in zip(reversed(doc.tolist()), reversed(at)):  # back to front: earlier positions stay put
            ids[d].insert(i, tag_id)
        for d in slow.tolist():
            ids[d] = self.encode(inject_tags(texts[d], self.tag, p, rngs[d]))
        return ids

    def decode(self, ids: list[int], keep_special: bool = True) -> str:
        return self.tok.decode(ids, skip_special_tokens=not keep_special)

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        self.tok.save(str(tmp))
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path, tag: str) -> TextTokenizer:
        return cls(Tokenizer.from_file(str(path)), tag)
