"""The run directory: its layout, its marker, its lock, and paths stored relative to it.

```
runs/<study>/.safepretrain-run  marker: this folder is a run directory (nothing else is ever written into)
  .lock                        held (flock, exclusive) by the one study process working here
  study.yaml manifest.json study.log
  data/                                        (data/pipeline.py)
  arms/<arm>/seed<k>/<pretrain|ift|benign_ft>/   ckpt/ metrics.jsonl train_result.json [tokens_by_source.json]
  eval/<arm>/seed<k>/<base|ift|benign_ft>/<decoder>/<task>/  results.json samples.jsonl
  report/
```

Safety rules (each one a fix of a way a study once lost or mislabelled data):
- a study only writes into an empty folder or a folder that carries the run marker;
- only one process works in a run directory at a time (`RunLock`); a second one fails at once;
- paths stored in the run's JSON files are relative to the run directory, so a run can be moved,
  copied and archived, and a copy never reads the original's files (`relative_to_run`, `inside_run`).
"""

from __future__ import annotations

import fcntl
import os
from dataclasses import dataclass
from pathlib import Path

from safepretrain.config import ArmConfig

RUN_MARKER = ".safepretrain-run"
LOCK_FILE = ".lock"

# (folder under arms/, stage name in results): the three trained stages, in order
STAGES = (("pretrain", "base"), ("ift", "ift"), ("benign_ft", "benign_ft"))
STAGE_NAMES = [name for _, name in STAGES]


class RunDirError(RuntimeError):
    """The run directory cannot be used safely; the message says why and what to do."""


def check_run_dir(path: Path) -> None:
    """Refuse a run directory that is not ours: a file, or a non-empty folder without the run marker."""
    if path.exists() and not path.is_dir():
        raise RunDirError(f"--out {path} is a file, not a folder; give a new or empty folder")
    if path.is_dir() and not (path / RUN_MARKER).is_file() and any(path.iterdir()):
        raise RunDirError(
            f"--out {path} is a non-empty folder that is not a safepretrain run directory (it has no "
            f"{RUN_MARKER} marker); choose a new or empty folder. If it is a run made by an older "
            f"safepretrain, mark it with: touch {path / RUN_MARKER}")
    parent = path if path.is_dir() else next((p for p in path.parents if p.exists()), Path("."))
    if not parent.is_dir():
        raise RunDirError(f"--out {path}: {parent} is a file, so no folder can be made under it; choose another "
                          "folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise RunDirError(f"--out {path}: {parent} is not writable; choose a folder you can write to")


class RunLock:
    """Exclusive, non-blocking lock on a run directory for the lifetime of a study.

    `flock` is released by the kernel when the process dies, so a killed study never leaves a stale lock.
    A part of a study (`scope`, e.g. one arm and seed run by a launcher) takes the run's lock shared and its
    own scope's lock exclusive: parts run side by side, a whole study excludes them all, and one part never
    runs twice at once.
    """

    def __init__(self, run_dir: Path, scope: str | None = None):
        self.run_dir, self.scope = run_dir, scope
        self._fd: int | None = None
        self._scope_fd: int | None = None

    def __enter__(self) -> RunLock:
        check_run_dir(self.run_dir)
        try:  # root passes os.access on read-only mounts and /proc: the first write is the real test
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / RUN_MARKER).touch()
            fd = os.open(self.run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise RunDirError(f"--out {self.run_dir} cannot be written ({err.strerror}: {err.filename}); choose a "
                              "folder you can write to") from None
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if self.scope else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise RunDirError(f"another safepretrain study (pid {holder}) is running in {self.run_dir}; wait for "
                              "it to finish, or give this one another --out") from None
        self._fd = fd
        if self.scope is None:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            return self
        scope_fd = os.open(self.run_dir / f"{LOCK_FILE}.{self.scope}", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(scope_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(scope_fd)
            self.__exit__()
            raise RunDirError(f"part {self.scope} of the study in {self.run_dir} is already running") from None
        self._scope_fd = scope_fd
        return self

    def __exit__(self, *exc) -> None:
        for name in ("_scope_fd", "_fd"):
            fd = getattr(self, name)
            if fd is not None:
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
                setattr(self, name, None)


def relative_to_run(path: Path, run_dir: Path) -> str:
    """`path` as stored in the run's JSON files: relative to the run directory."""
    return os.path.relpath(Path(path).resolve(), Path(run_dir).resolve())


def inside_run(stored: str, run_dir: Path) -> Path:
    """A stored relative path resolved against `run_dir`; refuses paths that leave the run directory."""
    root = Path(run_dir).resolve()
    path = (root / stored).resolve()
    if Path(stored).is_absolute() or not path.is_relative_to(root):
        raise RunDirError(f"{stored!r} in {run_dir} points outside the run directory; the run was written by an "
                          "older safepretrain or edited by hand: delete the step's folder to recompute it")
    return path


@dataclass
class ArmRun:
    """Paths of one (arm, seed) inside a run directory."""

    arm: ArmConfig
    seed: int
    run_dir: Path

    @property
    def label(self) -> str:
        return f"{self.arm.name} s{self.seed}"

    def stage_dir(self, stage: str) -> Path:
        """Training outputs of `stage` (pretrain | ift | benign_ft)."""
        return self.run_dir / "arms" / self.arm.name / f"seed{self.seed}" / stage

    def eval_dir(self, stage_name: str) -> Path:
        """Evaluation outputs of the model after `stage_name` (base | ift | benign_ft)."""
        return self.run_dir / "eval" / self.arm.name / f"seed{self.seed}" / stage_name


@dataclass(frozen=True)
class StageOutput:
    checkpoint: Path
    config_hash: str  # chains every upstream input: a retrained stage invalidates everything after it
