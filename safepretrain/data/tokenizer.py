"""Byte-level BPE trained on the data-stage output (HF `tokenizers`), with single special tokens.

The harmfulness tag and the chat markers are special tokens, so each is exactly one id: SafeBeam reads
the tag's next-token probability, and chat formatting never depends on how markers would be split.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from safepretrain.config.base import ASSISTANT, END, EOS, PAD, USER  # the one list of special tokens


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

    def decode(self, ids: list[int], keep_special: bool = True) -> str:
        return self.tok.decode(ids, skip_special_tokens=not keep_special)

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        self.tok.save(str(tmp))
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path, tag: str) -> TextTokenizer:
        return cls(Tokenizer.from_file(str(path)), tag)
