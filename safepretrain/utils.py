"""Small shared helpers: atomic files, JSONL, the project logger, and cached-step markers."""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from loguru import logger as loguru_logger

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


        loguru_logger.remove()
        loguru_logger.add(sys.stderr, level="WARNING")
    except ImportError:
        pass
    for name in ("sentence_transformers", "transformers", "httpx", "matplotlib"):
        logging.getLogger(name).setLevel(logging.WARNING)


def write_text_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:  # a failed write (disk full) leaves the previous file as it was and no temporary behind
        tmp.unlink(missing_ok=True)


def write_csv(rows: list[dict], path: Path, columns: list[str]) -> None:
    """Atomic CSV write with a header of `columns` (every row holds exactly those keys)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=columns)
            w.writeheader()
            w.writerows(rows)
        os.replace(tmp, path)
    finally:  # as in write_text_atomic: the previous file survives a failed write
        tmp.unlink(missing_ok=True)


def write_json(path: Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


class CorruptFileError(ValueError):
    """A file the run wrote earlier cannot be read back (truncated or edited); the message names it."""


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CorruptFileError(f"{path} is not valid JSON ({err}); it was truncated or edited. Delete the folder "
                               "of the step that wrote it to recompute it") from None


def read_marker(path: Path) -> dict:
    """A step's `done.json` (StepMarker): a JSON object whose `checksums`, when present, is an object too; anything
    else (a list, a number, edited by hand or written by another tool) raises CorruptFileError naming the fix."""
    info = read_json(path)
    if not isinstance(info, dict) or not isinstance(info.get("checksums", {}), dict):
        raise CorruptFileError(f"{path} is valid JSON but not a step marker (a JSON object with the step's config "
                               "hash and checksums); it was edited or written by something else. Delete the folder "
                               "of the step that wrote it to recompute it")
    return info


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_jsonl(path: Path, records: Iterable[dict]) -> int:
    """Atomic JSONL write (gzip when the name ends in .gz); returns the record count."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    opener = gzip.open if path.suffix == ".gz" else open
    n = 0
    try:
        with opener(tmp, "wt", encoding="utf-8") as f:
            for rec in records:
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
                n += 1
        os.replace(tmp, path)
    finally:  # as in write_text_atomic: the previous file survives a failed write
        tmp.unlink(missing_ok=True)
    return n


def read_jsonl(path: Path) -> Iterator[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def files_in(folder: Path, pattern: str = "**/*") -> list[Path]:
    """Files under `folder` matching `pattern`, without the step markers themselves (sorted)."""
    return sorted(p for p in folder.glob(pattern) if p.is_file() and p.name not in ("done.json", ".config_hash"))


class StepMarker:
    """`done.json` beside a step's outputs: the step is skipped when its config hash matches and its recorded
    outputs still have the checksums they had when written.

    A folder whose marker (or in-progress hash) disagrees with the current config is wiped first, so
    stale partial outputs (e.g. datatrove completion files) can never be mistaken for fresh ones. Only
    folders this class marked are ever wiped: a non-empty folder without a marker is someone else's,
    and the step refuses to run there. A recorded output that is missing or changed (a truncated
    checkpoint, a zero-filled shard) is reported with its path and the step is recomputed from scratch.
    """

    last_started: Path | None = None

    def __init__(self, folder: Path, config_hash: str):
        self.folder, self.hash = folder, config_hash
        self.done_file = folder / "done.json"
        self.started_file = folder / ".config_hash"
        self.corrupt = False

    def is_done(self) -> bool:
        if not self.done_file.is_file():
            return False
        try:
            info = read_marker(self.done_file)
        except CorruptFileError as err:
            log.warning(f"{err}; recomputing the step")
            self.corrupt = True
            return False
        if info.get("config_hash") != self.hash:
            return False
        if changed := self.changed_outputs(info):
            log.warning(f"{changed[0]}: the file was truncated, changed or removed since the step wrote it; "
                        "recomputing the step")
            self.corrupt = True
            return False
        return True

    def changed_outputs(self, info: dict, first_only: bool = True) -> list[str]:
        """`PATH: checksum mismatch (recorded …, found …)` for the recorded outputs (of `info`, this folder's
        done.json) that are missing or changed since `finish`; by default it stops at the first one."""
        changed = []
        for rel, digest in info.get("checksums", {}).items():
            path = self.folder / rel
            found = sha256_file(path) if path.is_file() else "missing"
            if found != digest:
                changed.append(f"{path}: checksum mismatch (recorded {digest[:12]}, found {found[:12]})")
                if first_only:
                    break
        return changed

    def start(self) -> None:
        """Begin (or resume) the step: keep partial outputs of the same config, wipe our own others."""
        if self.folder.exists():
            if self.started_file.is_file():
                previous = self.started_file.read_text().strip()
                if self.corrupt:
                    shutil.rmtree(self.folder)
                elif previous != self.hash:
                    log.info(f"{self.folder}: config changed since this step last ran (hash {previous} -> "
                             f"{self.hash}); rerunning it")
                    shutil.rmtree(self.folder)
            elif any(self.folder.iterdir()):
                raise StepFolderError(
                    f"{self.folder} holds files that no safepretrain step wrote (no {self.started_file.name}); "
                    "refusing to overwrite them. Move them away, or give the study another --out")
        self.folder.mkdir(parents=True, exist_ok=True)
        self.started_file.write_text(self.hash)
        self._started = time.perf_counter()
        StepMarker.last_started = self.folder  # a study that fails names this step (study.py, `--status`)

    def finish(self, outputs: Iterable[Path] = (), **info: Any) -> None:
        """Mark the step done; `outputs` (files inside the folder) get checksums verified on every reuse."""
        sums = {str(Path(p).relative_to(self.folder)): sha256_file(Path(p)) for p in outputs}
        took = {"step_seconds": round(time.perf_counter() - self._started, 2)} if hasattr(self, "_started") else {}
        write_json(self.done_file, {"config_hash": self.hash, **info, **took, "checksums": sums})

    def info(self) -> dict:
        return read_marker(self.done_file)


class StepFolderError(RuntimeError):
    """A step's output folder holds files that the step did not write."""
