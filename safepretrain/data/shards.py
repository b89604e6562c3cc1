"""Per-stream token shards: one flat uint16 memmap per stream, documents separated by EOS.

`<stream>.bin` holds the tokens, `<stream>.json` the counts and document offsets. Written to a
temporary name and renamed, so a killed job never leaves a half shard that looks complete.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

DTYPE = np.uint16  # vocabularies are capped at 65,535 (TokenizerConfig)


def write_shard(folder: Path, stream: str, docs: Iterable[list[int]], eos_id: int) -> dict:
    """Write one stream; returns its metadata ({"stream", "tokens", "docs", "offsets"})."""
    folder.mkdir(parents=True, exist_ok=True)
    offsets, chunks, total = [], [], 0
    for ids in docs:
        offsets.append(total)
        arr = np.asarray(list(ids) + [eos_id], dtype=DTYPE)
        chunks.append(arr)
        total += len(arr)
    data = np.concatenate(chunks) if chunks else np.zeros(0, dtype=DTYPE)
    tmp = folder / f".{stream}.bin.tmp"
    data.tofile(tmp)
    os.replace(tmp, folder / f"{stream}.bin")
    meta = {"stream": stream, "tokens": int(total), "docs": len(offsets), "offsets": offsets}
    (folder / f".{stream}.json.tmp").write_text(json.dumps(meta))
    os.replace(folder / f".{stream}.json.tmp", folder / f"{stream}.json")
    return meta


class TokenShard:
    """Read-only view of a stream's tokens; windows wrap around so tiny streams still fill a row."""

    def __init__(self, folder: Path, stream: str):
        self.stream = stream
        self.meta = json.loads((folder / f"{stream}.json").read_text())
        n = self.meta["tokens"]
        self.tokens = np.memmap(folder / f"{stream}.bin", dtype=DTYPE, mode="r", shape=(n,)) if n else \
            np.zeros(0, dtype=DTYPE)

    def __len__(self) -> int:
        return int(self.meta["tokens"])

    def window(self, start: int, length: int) -> np.ndarray:
        """`length` tokens from `start`, wrapping past the end (int64 for torch)."""
        n = len(self)
        start %= n
        if start + length <= n:
            return np.asarray(self.tokens[start : start + length], dtype=np.int64)
        idx = (start + np.arange(length)) % n
        return np.asarray(self.tokens[idx], dtype=np.int64)


def load_shards(folder: Path) -> dict[str, TokenShard]:
    """Every stream shard in `folder`, by name."""
    return {p.stem: TokenShard(folder, p.stem) for p in sorted(folder.glob("*.json"))}
