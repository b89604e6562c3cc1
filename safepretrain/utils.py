"""Small shared helpers: atomic files, JSONL, the project logger, and cached-step markers."""

from __future__ import annotations

import gzip
import json
import logging
import os
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger("safepretrain")


def setup_logging(log_file: Path | None = None, level: int = logging.INFO) -> None:
    """Log lines to stderr (and to `log_file`); quiet the libraries that chat at INFO."""
    fmt = logging.Formatter("%(asctime)s %(levelname).1s %(message)s", datefmt="%H:%M:%S")
    log.handlers.clear()
    log.setLevel(level)
    log.propagate = False
    stream = logging.StreamHandler()
    stream.setFormatter(fmt)
    log.addHandler(stream)
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(log_file)
        fh.setFormatter(fmt)
        log.addHandler(fh)
    try:  # datatrove logs through loguru: keep its warnings, drop its per-task INFO chatter on stderr
        import sys

        from loguru import logger as loguru_logger

        loguru_logger.remove()
        loguru_logger.add(sys.stderr, level="WARNING")
    except ImportError:
        pass
    for name in ("sentence_transformers", "transformers", "httpx", "matplotlib"):
        logging.getLogger(name).setLevel(logging.WARNING)


def write_text_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json(path: Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def write_jsonl(path: Path, records: Iterable[dict]) -> int:
    """Atomic JSONL write (gzip when the name ends in .gz); returns the record count."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    opener = gzip.open if path.suffix == ".gz" else open
    n = 0
    with opener(tmp, "wt", encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            n += 1
    os.replace(tmp, path)
    return n


def read_jsonl(path: Path) -> Iterator[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


class StepMarker:
    """`done.json` beside a step's outputs: the step is skipped when its config hash matches.

    A folder whose marker (or in-progress hash) disagrees with the current config is wiped first, so
    stale partial outputs (e.g. datatrove completion files) can never be mistaken for fresh ones. Only
    folders this class marked are ever wiped: a non-empty folder without a marker is someone else's,
    and the step refuses to run there.
    """

    def __init__(self, folder: Path, config_hash: str):
        self.folder, self.hash = folder, config_hash
        self.done_file = folder / "done.json"
        self.started_file = folder / ".config_hash"

    def is_done(self) -> bool:
        return self.done_file.is_file() and read_json(self.done_file).get("config_hash") == self.hash

    def start(self) -> None:
        """Begin (or resume) the step: keep partial outputs of the same config, wipe our own others."""
        if self.folder.exists():
            if self.started_file.is_file():
                previous = self.started_file.read_text().strip()
                if previous != self.hash:
                    log.info(f"{self.folder}: config changed since this step last ran (hash {previous} -> "
                             f"{self.hash}); rerunning it")
                    shutil.rmtree(self.folder)
            elif any(self.folder.iterdir()):
                raise StepFolderError(
                    f"{self.folder} holds files that no safepretrain step wrote (no {self.started_file.name}); "
                    "refusing to overwrite them. Move them away, or give the study another --out")
        self.folder.mkdir(parents=True, exist_ok=True)
        self.started_file.write_text(self.hash)

    def finish(self, **info: Any) -> None:
        write_json(self.done_file, {"config_hash": self.hash, **info})

    def info(self) -> dict:
        return read_json(self.done_file)


class StepFolderError(RuntimeError):
    """A step's output folder holds files that the step did not write."""
