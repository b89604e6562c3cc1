"""Checkpoints and model loading: the one place that reads and writes weights.

A checkpoint is a folder `step_XXXXXX/` with `model.safetensors`, `optimizer.safetensors` and
`state.json`, written to a temporary folder and renamed, so a killed run never leaves a half-written
checkpoint under a final name. Nothing here unpickles: safetensors and JSON only (except the
`.metadata` of opt-in DCP checkpoints, see below). Evaluation, the server and attacks load models from
here, never from the training loop.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import warnings
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
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


def save_checkpoint(folder: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, state: dict) -> Path:
    """Write `folder/step_XXXXXX/` atomically (temp folder + rename)."""
    final = folder / f"step_{state['step']:06d}"
    tmp = folder / f".tmp_step_{state['step']:06d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_weights(model, str(tmp / "model.safetensors"))  # handles the tied embedding/head weights
    tensors, meta = _optimizer_tensors(opt)
    save_file(tensors, str(tmp / "optimizer.safetensors"))
    (tmp / "state.json").write_text(json.dumps({**state, "optimizer": meta}, indent=1))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    return final


def latest_checkpoint(folder: Path) -> Path | None:
    done = sorted(p for p in folder.glob("step_*") if (p / "state.json").is_file())
    return done[-1] if done else None


def load_model(model_cfg: ModelConfig, weights: Path, device: str | torch.device = "cpu") -> Transformer:
    """A model from `weights` (a model.safetensors file or a checkpoint folder), in eval mode."""
    path = weights / "model.safetensors" if weights.is_dir() else weights
    model = Transformer(model_cfg)
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
                        consolidate: bool = False) -> Path:
    """Collective: every rank calls it. `consolidate` also writes a full `model.safetensors` (rank 0), which
    evaluation, export and post-training read; the final checkpoint of a run gets one."""

    final = folder / f"step_{state['step']:06d}"
    tmp = folder / f".tmp_step_{state['step']:06d}"  # same path on every rank: needs a shared filesystem
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
        (tmp / "state.json").write_text(json.dumps({**state, "format": "dcp", "sampler_step": state["step"],
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
