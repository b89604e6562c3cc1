"""Checkpoints and model loading: the one place that reads and writes weights.

A checkpoint is a folder `step_XXXXXX/` with `model.safetensors`, `optimizer.safetensors` and
`state.json`, written to a temporary folder and renamed, so a killed run never leaves a half-written
checkpoint under a final name. Nothing here unpickles: safetensors and JSON only. Evaluation, the
server and attacks load models from here, never from the training loop.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from safetensors.torch import load_model as load_weights
from safetensors.torch import save_model as save_weights

from safepretrain.config import ModelConfig
from safepretrain.model import Transformer


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
