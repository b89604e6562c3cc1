"""The run directory: the one owner of its layout (stage names, paths, globs), its marker and lock, paths stored
relative to it, and loading a checkpoint's own config, tokenizer and model for the study, eval, serve and export.

```
runs/<study>/.safepretrain-run  marker: this folder is a run directory (nothing else is ever written into)
  .lock                        held (flock, exclusive) by the one study process working here
  .lock.<part> .lock.step-data  a launched part's own lock (it holds .lock shared); the data stage's (StepLock)
  study.yaml manifest.json study.log [failed.json] [logs/ launch/]
  scoring/ data/ judge/                          (data/pipeline.py, eval/judges)
  trunk/seed<k>/                                 the shared safe-only trunk (run/stages.py)
  arms/<arm>/seed<k>/<pretrain|ift|benign_ft>/   ckpt/ metrics.jsonl done.json [tokens_by_source.json]
  eval/<arm>/seed<k>/<base|ift|benign_ft>/<decoder>/<task>/  results.json samples.jsonl items.jsonl
  eval/<arm>/seed<k>/<benign_ft_curve|pretrain_trajectory>/step_XXXXXX/<decoder>/<task>/
  eval/baselines/  report/  eval_adhoc/  scorer_eval/
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
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from safepretrain.config import ArmConfig, StudyConfig, load_config
from safepretrain.data.pipeline import load_data_folder, load_tokenizer
from safepretrain.data.records import read_stream
from safepretrain.data.tokenizer import TextTokenizer
from safepretrain.train.checkpoint import load_model, resolve_device
from safepretrain.train.model import Transformer
from safepretrain.utils import log, read_marker

RUN_MARKER = ".safepretrain-run"
LOCK_FILE = ".lock"

# ---- stage names: the trained stages (their folders under arms/, and their config sections) and the name of the
# model each one leaves in the results (the pretrained model is evaluated as `base`)
PRETRAIN, IFT, BENIGN_FT, HARMFUL_FT = "pretrain", "ift", "benign_ft", "harmful_ft"
BASE = "base"
# (folder under arms/, stage name in results); benign and harmful finetuning both start from the IFT model
STAGES = ((PRETRAIN, BASE), (IFT, IFT), (BENIGN_FT, BENIGN_FT), (HARMFUL_FT, HARMFUL_FT))
TRAINED_STAGES = tuple(folder for folder, _ in STAGES)
STAGE_NAMES = [name for _, name in STAGES]
STAGE_OF_FOLDER = dict(STAGES)
FOLDER_OF_STAGE = {name: folder for folder, name in STAGES}
CHAT_STAGES = frozenset({IFT, BENIGN_FT, HARMFUL_FT})  # tuned models read chat prompts; base models completion-style
# evaluations of intermediate checkpoints: the finetuning curves (one per finetuning attack) and the trajectory
CURVE, HARMFUL_CURVE, TRAJECTORY = "benign_ft_curve", "harmful_ft_curve", "pretrain_trajectory"
CURVES = {BENIGN_FT: CURVE, HARMFUL_FT: HARMFUL_CURVE}  # finetuning stage → its curve's eval folder
FINETUNE_ATTACKS = (BENIGN_FT, HARMFUL_FT)  # stages that attack the IFT model by finetuning (controls, findings)
POSTTRAIN_STAGES = (IFT, BENIGN_FT, HARMFUL_FT)
NO_DECODER = "none"  # the decoder folder of tasks that do not decode (likelihood, probes, held-out loss)


def step_folder(step: int) -> str:
    """A checkpoint's (or a curve point's) folder name."""
    return f"step_{step:06d}"


def step_of(folder: Path) -> int:
    return int(folder.name.removeprefix("step_"))


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

    @staticmethod
    def held(run_dir: Path) -> bool:
        """Whether a study holds the lock of `run_dir` now (`--status`)."""
        try:
            fd = os.open(Path(run_dir) / LOCK_FILE, os.O_RDWR)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(fd, fcntl.LOCK_UN)
            return False
        except BlockingIOError:
            return True
        finally:
            os.close(fd)

    def __exit__(self, *exc) -> None:
        for name in ("_scope_fd", "_fd"):
            fd = getattr(self, name)
            if fd is not None:
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
                setattr(self, name, None)


class StepLock:
    """Exclusive, blocking lock on one step that every part of a study shares (the data stage). Launched parts hold
    the run's lock shared, so two parts started together on a fresh run would both build that step in the same
    folders; under this lock the first builds it and the others wait, then find it done. Released by the kernel
    when the process dies, like `RunLock`."""

    def __init__(self, run_dir: Path, step: str):
        self.file, self.step = RunDir(run_dir).scope_lock_file(f"step-{step}"), step
        self._fd: int | None = None

    def __enter__(self) -> StepLock:
        self.file.parent.mkdir(parents=True, exist_ok=True)  # a library call may build the step in a new folder
        (self.file.parent / RUN_MARKER).touch()  # ... which, like RunLock's, is a run directory from now on
        fd = os.open(self.file, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info(f"{self.step}: another part of this study is running the step; waiting for it")
            fcntl.flock(fd, fcntl.LOCK_EX)
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


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


@dataclass(frozen=True)
class StageOutput:
    checkpoint: Path
    config_hash: str  # chains every upstream input: a retrained stage invalidates everything after it


class Under:
    """A fixed path of a run directory, declared as a class attribute of `RunDir` (`data = Under("data")`); read on
    an instance it is that run's path."""

    def __init__(self, *parts: str):
        self.parts = parts

    def __get__(self, rundir: RunDir | None, owner: type | None = None) -> Path:
        if rundir is None:
            return self  # type: ignore[return-value]  (the descriptor itself, on the class)
        return rundir.root.joinpath(*self.parts)


class RunDir:
    """Every path of one run directory, every glob over it, and loading what a checkpoint of it needs."""

    def __init__(self, root: Path | str):
        self.root = Path(root)

    # ---- fixed paths (their place depends on no arm, seed, stage or part)
    marker = Under(RUN_MARKER)
    lock_file = Under(LOCK_FILE)
    study_yaml = Under("study.yaml")
    manifest = Under("manifest.json")
    slurm_scripts = Under("launch", "slurm")
    slurm_logs = Under("logs", "slurm")
    scoring = Under("scoring")  # data/pipeline.py
    data = Under("data")
    scorer_eval = Under("scorer_eval")
    judge = Under("judge")  # eval/judges
    judge_agreement = Under("judge", "agreement")
    judge_quality_file = Under("judge", "quality.json")  # the judges' precision / recall on labelled responses
    human_agreement_file = Under("judge", "agreement", "agreement.json")  # each judge against human labels
    baselines = Under("eval", "baselines")  # text-only probe baselines (eval/runner.py)
    probe_baselines_file = Under("eval", "baselines", "results.json")
    report = Under("report")
    report_markdown = Under("report", "report.md")

    def __repr__(self) -> str:
        return f"RunDir({str(self.root)!r})"

    @classmethod
    def containing(cls, path: Path) -> RunDir:
        """The run directory a checkpoint (or any path) lies in: the nearest folder above with the run marker and a
        study.yaml."""
        for folder in [path, *path.parents]:
            if (folder / RUN_MARKER).is_file() and (folder / "study.yaml").is_file():
                return cls(folder)
        raise RunDirError(f"{path} is not inside a safepretrain run directory (no {RUN_MARKER} above it)")

    def stored(self, relative: str) -> Path:
        """A path stored relative to the run (in its JSON files), as a path under this run directory."""
        return self.root / relative

    # ---- logs and locks of the study or of one launched part

    def scope_lock_file(self, scope: str) -> Path:
        return self.root / f"{LOCK_FILE}.{scope}"

    def log_file(self, scope: str | None = None) -> Path:
        """The study's log, or a launched part's."""
        return self.root / ("study.log" if scope is None else f"logs/study-{scope}.log")

    def failed_file(self, scope: str | None = None) -> Path:
        return self.root / ("failed.json" if scope is None else f"failed-{scope}.json")

    def failed_files(self) -> list[Path]:
        return sorted(self.root.glob("failed*.json"))

    # ---- the shared safe-only trunk

    def trunk(self, seed: int) -> Path:
        return self.root / "trunk" / f"seed{seed}"

    # ---- arms
    def stage_dir(self, arm: str, seed: int, folder: str) -> Path:
        """Training outputs of a trained stage (pretrain | ift | benign_ft) of one arm and seed."""
        return self.root / "arms" / arm / f"seed{seed}" / folder

    def tokens_by_source(self, arm: str, seed: int) -> Path:
        return self.stage_dir(arm, seed, PRETRAIN) / "tokens_by_source.json"

    @staticmethod
    def stage_of_checkpoint(checkpoint: Path) -> str | None:
        """The stage name (base | ift | benign_ft) of a checkpoint from the stage folder above it; None if none."""
        folder = next((p.name for p in Path(checkpoint).parents if p.name in STAGE_OF_FOLDER), None)
        return STAGE_OF_FOLDER.get(folder) if folder else None

    def finished_checkpoint(self, arm: str, seed: int, stage: str) -> Path:
        """The checkpoint a finished stage recorded (stage: base | ift | benign_ft); raises RunDirError if none."""
        done = self.stage_dir(arm, seed, FOLDER_OF_STAGE[stage]) / "done.json"
        if not done.is_file():
            raise RunDirError(f"{done.parent} has no finished checkpoint; run the study first")
        return inside_run(read_marker(done)["checkpoint"], self.root)

    # ---- evaluation
    def eval_dir(self, arm: str, seed: int, stage: str) -> Path:
        """Evaluation outputs of the model after `stage` (base | ift | benign_ft, or the curve / trajectory)."""
        return self.root / "eval" / arm / f"seed{seed}" / stage

    def eval_done_file(self, arm: str, seed: int, stage: str) -> Path:
        """The marker of a finished evaluation of one model (utils.StepMarker)."""
        return self.eval_dir(arm, seed, stage) / "done.json"

    def eval_adhoc(self, name: str) -> Path:
        return self.root / "eval_adhoc" / name

    def results_files(self) -> list[Path]:
        """results.json of every finished (arm, seed, stage, decoder, task) evaluation, sorted."""
        return sorted((self.root / "eval").glob("*/seed*/*/*/*/results.json"))

    def items_files(self, curve: str | None = None) -> list[Path]:
        """items.jsonl of every evaluation, or with `curve` (a finetuning stage) of every point of its curve."""
        pattern = f"*/seed*/{CURVES[curve]}/step_*/*/*/items.jsonl" if curve else "*/seed*/*/*/*/items.jsonl"
        return sorted((self.root / "eval").glob(pattern))

    def samples_files(self, task: str = "*", decoder: str = "*") -> list[Path]:
        return sorted((self.root / "eval").glob(f"*/seed*/*/{decoder}/{task}/samples.jsonl"))

    def trajectory_results(self) -> list[Path]:
        return sorted((self.root / "eval").glob(f"*/seed*/{TRAJECTORY}/step_*/*/*/results.json"))

    def base_results(self) -> list[Path]:
        return sorted((self.root / "eval").glob(f"*/seed*/{BASE}/*/*/results.json"))

    def done_files(self) -> list[Path]:
        return sorted(self.root.rglob("done.json"))

    # ---- loading a checkpoint of this run
    def load_config(self, overrides: list[str] | None = None) -> StudyConfig:
        """The run's own config (its study.yaml), with `overrides`; the run directory is this one."""
        return load_config(self.study_yaml, [*(overrides or []), f"out_dir={self.root}"])

    def tokenizer(self, cfg: StudyConfig) -> TextTokenizer:
        return load_tokenizer(self.data, cfg.data.interventions.tag)

    def data_artifacts(self, cfg: StudyConfig):
        """The finished data stage: tokenizer, token shards and report card (data/pipeline.py)."""
        return load_data_folder(self.data, cfg.data.interventions.tag)

    def model(self, cfg: StudyConfig, checkpoint: Path, device: str | torch.device = "cpu",
              tok: TextTokenizer | None = None) -> Transformer:
        """The model of `checkpoint` (a folder of this run), in eval mode, built from the config its state.json
        records; raises CheckpointError where the run's config or tokenizer now differs from what it was trained
        with (train/checkpoint.py `recorded_config`)."""
        tok = tok or self.tokenizer(cfg)
        return load_model(cfg.model.model_copy(update={"vocab_size": tok.vocab_size}), checkpoint,
                          resolve_device(str(device)), tokenizer_sha256=tok.sha256)

    def stream(self, name: str) -> list[dict]:
        """The documents of one stream of the data stage."""
        return read_stream(self.data, name)


@dataclass
class ArmRun:
    """One (arm, seed) of a run directory."""

    arm: ArmConfig
    seed: int
    rundir: RunDir

    @property
    def run_dir(self) -> Path:
        return self.rundir.root

    @property
    def label(self) -> str:
        return f"{self.arm.name} s{self.seed}"

    def stage_dir(self, stage: str) -> Path:
        """Training outputs of `stage` (pretrain | ift | benign_ft)."""
        return self.rundir.stage_dir(self.arm.name, self.seed, stage)

    def eval_dir(self, stage_name: str) -> Path:
        """Evaluation outputs of the model after `stage_name` (base | ift | benign_ft, or curve / trajectory)."""
        return self.rundir.eval_dir(self.arm.name, self.seed, stage_name)


def iter_steps(folder: Path, need: tuple[str, ...] = ("state.json",)) -> Iterator[tuple[int, Path]]:
    """(step, folder) of every saved step_XXXXXX folder in `folder` holding the files `need`, oldest first."""
    for p in sorted(folder.glob("step_*")):
        if all((p / n).is_file() for n in need):
            yield step_of(p), p
