"""Checkpoints and model loading: the one place that reads and writes weights.

A checkpoint is a folder `step_XXXXXX/` with `model.safetensors`, `optimizer.safetensors` and
`state.json`, written to a temporary folder and renamed, so a killed run never leaves a half-written
checkpoint under a final name; a write that fails (a full disk) removes its temporary folder and raises a
one-line `CheckpointError`, leaving the earlier checkpoints to resume from. `state.json` records the model
config and the tokenizer's sha256 the weights were trained with, and `load_model` builds the model from that
record and refuses a config that disagrees with it, naming the field. Nothing here unpickles: safetensors
and JSON only (except the `.metadata` of opt-in DCP checkpoints, see below). Evaluation, the server and
attacks load models from here, never from the training loop.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import json
import os
import shutil
import warnings
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from pydantic import ValidationError
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from safetensors.torch import load_model as load_weights
from safetensors.torch import save_model as save_weights
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)

from safepretrain.config import ModelConfig
from safepretrain.train.model import Transformer
from safepretrain.utils import log, read_json

# what `state.json` records of the training run, for loaders to check a checkpoint against
MODEL_RECORD, TOKENIZER_RECORD = "model", "tokenizer_sha256"
# fields that do not change what trained weights compute: a preset only names defaults (the resolved numbers are
# compared) and init_std only shaped the weights before the first step
_NOT_COMPARED = frozenset({"preset", "init_std"})


class CheckpointError(RuntimeError):
    """A checkpoint cannot be written, or does not match the config it is loaded with; the message says why and
    what to do."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimizer state dict into flat tensors (safetensors) and JSON-able rest."""
    sd = opt.state_dict()
    tensors = {f"{pid}.{k}": v.contiguous() for pid, st in sd["state"].items() for k, v in st.items()}
    return tensors, {"param_groups": sd["param_groups"]}


def _load_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = value
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def training_record(model: torch.nn.Module, tokenizer_sha256: str | None) -> dict:
    """What a checkpoint's state.json records of how its weights were trained (checked by `load_model`)."""
    cfg = getattr(model, "module", model).cfg  # DDP wraps the Transformer; FSDP2 keeps its class
    return {MODEL_RECORD: cfg.model_dump(), TOKENIZER_RECORD: tokenizer_sha256}


@contextlib.contextmanager
def _written_or_removed(tmp: Path, final: Path):
    """Remove `tmp` when the write inside fails, and turn an I/O failure into a one-line CheckpointError: the
    training log already says where the run was, and a full disk needs no traceback."""
    try:
        yield
    except (OSError, SafetensorError, CheckpointException) as err:
        shutil.rmtree(tmp, ignore_errors=True)
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err).strip().splitlines()[-1]
        full = (isinstance(err, OSError) and err.errno == errno.ENOSPC) or "os error 28" in str(err)
        fix = "free disk space (or lower keep_checkpoints)" if full else "fix the cause"
        raise CheckpointError(f"checkpoint {final.name} could not be written in {final.parent}: {reason}; the "
                              f"earlier checkpoints are intact: {fix} and rerun the same command to resume "
                              "from the last one") from None
    except BaseException:  # a kill (KeyboardInterrupt): no half-written temp folder either
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def save_checkpoint(folder: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, state: dict, *,
                    tokenizer_sha256: str | None = None) -> Path:
    """Write `folder/step_XXXXXX/` atomically (temp folder + rename), recording the model config and tokenizer."""
    final = folder / f"step_{state['step']:06d}"
    tmp = folder / f".tmp_step_{state['step']:06d}"
    with _written_or_removed(tmp, final):
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_weights(model, str(tmp / "model.safetensors"))  # handles the tied embedding/head weights
        tensors, meta = _optimizer_tensors(opt)
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        (tmp / "state.json").write_text(json.dumps({**state, **training_record(model, tokenizer_sha256),
                                                    "optimizer": meta}, indent=1))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
    return final


def latest_checkpoint(folder: Path) -> Path | None:
    done = sorted(p for p in folder.glob("step_*") if (p / "state.json").is_file())
    return done[-1] if done else None


def recorded_config(checkpoint: Path, model_cfg: ModelConfig, tokenizer_sha256: str | None = None) -> ModelConfig:
    """The model config `checkpoint` (a folder, or a model.safetensors in one) was trained with, from its
    state.json; refuses `model_cfg` (the run's config) or `tokenizer_sha256` (the run's tokenizer) where they
    differ from that record. A checkpoint of an older safepretrain records nothing: `model_cfg`, with a warning."""
    folder = checkpoint if checkpoint.is_dir() else checkpoint.parent
    state_file = folder / "state.json"
    record = read_json(state_file) if state_file.is_file() else {}
    if not isinstance(record, dict) or MODEL_RECORD not in record:
        log.warning(f"{folder} records no model config (written by an older safepretrain): loading it with the "
                    "run's config, unchecked")
        return model_cfg
    try:
        trained = ModelConfig.model_validate(record[MODEL_RECORD])
    except ValidationError as err:
        raise CheckpointError(f"{state_file} records a model config this safepretrain cannot read ({err.error_count()}"
                              " errors); load it with the safepretrain version that trained it") from None
    now = model_cfg.model_dump()
    changed = [f"model.{k}={v!r} (config now: {now.get(k)!r})" for k, v in trained.model_dump().items()
               if k not in _NOT_COMPARED and now.get(k) != v]
    if changed:
        raise CheckpointError(f"{folder} was trained with {', '.join(changed)}: loading it with the changed "
                              "config would compute another model; set the run's study.yaml back to the trained "
                              "value, or retrain the stage")
    was = record.get(TOKENIZER_RECORD)
    if tokenizer_sha256 and was and was != tokenizer_sha256:
        raise CheckpointError(f"{folder} was trained with another tokenizer (sha256 {was[:12]}…) than the run's "
                              f"(sha256 {tokenizer_sha256[:12]}…): its token ids mean other words; restore the data "
                              "stage it was trained with, or retrain the stage")
    return trained


def load_model(model_cfg: ModelConfig, weights: Path, device: str | torch.device = "cpu", *,
               tokenizer_sha256: str | None = None) -> Transformer:
    """A model from `weights` (a model.safetensors file or a checkpoint folder), in eval mode, built from the
    config the checkpoint records (`recorded_config`: it must agree with `model_cfg`)."""
    path = weights / "model.safetensors" if weights.is_dir() else weights
    model = Transformer(recorded_config(weights, model_cfg, tokenizer_sha256))
    load_weights(model, str(path))
    return model.to(device).eval()


def load_training_state(folder: Path, model: torch.nn.Module, opt: torch.optim.Optimizer,
                        device: torch.device) -> dict:
    """Load weights and optimizer state from checkpoint `folder` into `model`/`opt`; returns state.json."""
    load_weights(model, str(folder / "model.safetensors"))
    state = json.loads((folder / "state.json").read_text())
    _load_optimizer(opt, load_file(str(folder / "optimizer.safetensors"), device=str(device)), state["optimizer"])
    return state


def load_weights_into(model: torch.nn.Module, checkpoint: Path) -> None:
    """Initialise `model` from a checkpoint folder (or a model.safetensors file)."""
    path = checkpoint / "model.safetensors" if checkpoint.is_dir() else checkpoint
    load_weights(model, str(path))


# --------------------------------------------------------------------------- distributed checkpoints (DCP)
# `step_XXXXXX/` then holds DCP shards (`*.distcp` + `.metadata`) of {"model", "optim"} keyed by parameter
# name, so a checkpoint written by N ranks (DDP or FSDP2) loads at any other world size, one process included:
# each rank asks DCP for exactly the tensors (or shards) it owns. `state.json` (step, sampler position, RNG)
# is written last by rank 0 and the folder renamed, so a killed save never looks complete.
# Unlike safetensors, DCP's `.metadata` is a pickle: load DCP checkpoints only from runs you trust.
def _is_dist() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _barrier() -> None:
    if _is_dist() and torch.distributed.get_world_size() > 1:
        torch.distributed.barrier()


def _rank() -> int:
    return torch.distributed.get_rank() if _is_dist() else 0


@contextlib.contextmanager
def _single_process_ok():
    """Silence DCP's warning that it saves/loads in one process: `checkpoint_format: dcp` without torchrun."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def save_dcp_checkpoint(folder: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, state: dict, *,
                        consolidate: bool = False, tokenizer_sha256: str | None = None) -> Path:
    """Collective: every rank calls it. `consolidate` also writes a full `model.safetensors` (rank 0), which
    evaluation, export and post-training read; the final checkpoint of a run gets one."""

    final = folder / f"step_{state['step']:06d}"
    tmp = folder / f".tmp_step_{state['step']:06d}"  # same path on every rank: needs a shared filesystem
    with _written_or_removed(tmp, final):
        if _rank() == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        _barrier()
        model_sd, optim_sd = get_state_dict(model, opt)
        with _single_process_ok():
            dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(tmp))
        if consolidate:  # collective gather of the shards; only rank 0 keeps (and writes) the full tensors
            full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
            if _rank() == 0:
                full.pop("tok_emb.weight", None)  # tied to head.weight, which save_model keeps
                save_file({k: v.contiguous() for k, v in full.items()}, str(tmp / "model.safetensors"),
                          metadata={"format": "pt"})
        _barrier()
        if _rank() == 0:
            rng = base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode()
            (tmp / "state.json").write_text(json.dumps({**state, **training_record(model, tokenizer_sha256),
                                                        "format": "dcp", "sampler_step": state["step"],
                                                        "torch_rng": rng}, indent=1))
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
        _barrier()
    return final


def is_dcp_checkpoint(folder: Path) -> bool:
    return (folder / ".metadata").is_file()


def load_dcp_state(folder: Path, model: torch.nn.Module, opt: torch.optim.Optimizer) -> dict:
    """Load a DCP checkpoint into (possibly wrapped) `model`/`opt`, resharding as needed; returns state.json."""

    if not is_dcp_checkpoint(folder):
        raise FileNotFoundError(f"{folder / '.metadata'} is missing: not a complete DCP checkpoint")
    state = json.loads((folder / "state.json").read_text())
    model_sd, optim_sd = get_state_dict(model, opt)  # the tensors (shards) this rank owns, to be filled in place
    sd = {"model": model_sd, "optim": optim_sd}
    try:
        with _single_process_ok():
            dcp.load(sd, checkpoint_id=str(folder))
    except CheckpointException as e:  # a BaseException: turn it into an error callers can catch and report
        raise RuntimeError(f"DCP load of {folder} failed: {str(e).strip().splitlines()[-1]}") from e
    set_state_dict(model, opt, model_state_dict=sd["model"], optim_state_dict=sd["optim"])
    if "torch_rng" in state:
        torch.set_rng_state(torch.frombuffer(bytearray(base64.b64decode(state["torch_rng"])), dtype=torch.uint8))
    return state


def checkpoints_newest_first(folder: Path) -> list[Path]:
    return sorted((p for p in folder.glob("step_*") if (p / "state.json").is_file()), reverse=True)


def prune_checkpoints(folder: Path, keep: int, protect: tuple[int, ...] = ()) -> list[Path]:
    """Delete all but the newest `keep` checkpoints, never those at `protect` steps (branch points)."""
    removed = []
    for p in checkpoints_newest_first(folder)[keep:]:
        if int(p.name.split("_")[1]) not in protect:
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed
