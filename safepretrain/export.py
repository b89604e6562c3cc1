"""`safepretrain export CKPT --to DIR`: a checkpoint as a Hugging Face `LlamaForCausalLM` folder, with its
tokenizer and chat template, for the tools researchers evaluate with (lm-eval-harness, vLLM, inspect_ai,
TransformerLens).

Our model is the Llama layout (model.py: RMSNorm, rotate-half RoPE, grouped-query attention, SwiGLU, tied
embeddings, no biases), so the export renames weights and changes no number: `transformers` computes our
logits (tested to 1e-4). The tokenizer keeps its special tokens (the harmfulness tag, the chat markers), and
the chat template writes exactly `data/chat.py`'s format, so a served model is prompted as it was trained.

The folder is built inside a hidden `.<name>.<random>.export-partial/` next to it and moved into place when
complete, so a killed export never leaves a loadable half-model: the hidden folder holds the model one level down
(no config.json of its own), and the next export into the same parent removes it once no export holds its lock.
Files get the user's umask (not the 0600/0700 of temporary files).
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from safepretrain.config import ConfigError
from safepretrain.config.base import ASSISTANT, END, EOS, PAD, USER
from safepretrain.data.tokenizer import TextTokenizer
from safepretrain.rundir import RunDir, RunDirError, relative_to_run
from safepretrain.train.checkpoint import CheckpointError
from safepretrain.train.model import Transformer

# data/chat.py's format: <|user|>{prompt}<|end|><|assistant|>{response}<|end|>; generation starts after <|assistant|>
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}" + USER + "{{ message['content'] }}" + END
    + "{% elif message['role'] == 'assistant' %}" + ASSISTANT + "{{ message['content'] }}" + END
    + "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}" + ASSISTANT + "{% endif %}"
)

_BLOCK = {"attn_norm": "input_layernorm", "attn.wq": "self_attn.q_proj", "attn.wk": "self_attn.k_proj",
          "attn.wv": "self_attn.v_proj", "attn.wo": "self_attn.o_proj", "mlp_norm": "post_attention_layernorm",
          "mlp.w1": "mlp.gate_proj", "mlp.w3": "mlp.up_proj", "mlp.w2": "mlp.down_proj"}


# suffix of the hidden folder an export builds in; it holds the model under `_INNER`, never at its top level
PARTIAL, _INNER = ".export-partial", "model"


class ExportError(RuntimeError):
    """The checkpoint or the output folder cannot be used; the message says why."""


def check_export_folder(out: Path) -> None:
    """Refuse `--to` where no export can go: an existing file or non-empty folder, or a path under a file."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"--to {out} exists and is not an empty folder; choose a new folder")
    above = next((p for p in out.parents if p.exists()), Path("."))
    if not above.is_dir():
        raise ExportError(f"--to {out}: {above} is a file, so no folder can be made under it; choose another folder")
    if not os.access(above, os.W_OK | os.X_OK):
        raise ExportError(f"--to {out}: {above} is not writable; choose a folder you can write to")


def remove_stale_partials(parent: Path) -> list[Path]:
    """Remove the hidden folders of killed exports in `parent`: those no live export holds the lock of."""
    removed = []
    for folder in parent.glob(f".*{PARTIAL}"):
        try:
            fd = os.open(folder, os.O_RDONLY)
        except OSError:
            continue  # removed meanwhile, or not ours to open
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue  # an export running now
        else:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
        finally:
            os.close(fd)
    return removed


def _reason(err: OSError) -> str:
    return f"{err.strerror or err}: {err.filename}" if err.filename else str(err.strerror or err)


def _umask() -> int:
    # os.umask can only be read by setting it; an export runs in one thread, so the brief swap is safe
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _apply_umask(folder: Path) -> None:
    """Temporary files (safetensors', mkdtemp's) are 0600/0700: give the export the modes of any new file."""
    mask = _umask()
    folder.chmod(0o777 & ~mask)
    for path in folder.rglob("*"):
        path.chmod((0o777 if path.is_dir() else 0o666) & ~mask)


def hf_state_dict(model: Transformer) -> dict[str, torch.Tensor]:
    """Our weights under `LlamaForCausalLM`'s names (the head is tied to the embedding, as in ours)."""
    out = {"model.embed_tokens.weight": model.tok_emb.weight, "model.norm.weight": model.norm.weight}
    for i, block in enumerate(model.blocks):
        params = dict(block.named_parameters())
        for ours, theirs in _BLOCK.items():
            out[f"model.layers.{i}.{theirs}.weight"] = params[f"{ours}.weight"]
    return {k: v.detach().float().contiguous() for k, v in out.items()}


def llama_config(model: Transformer, tok: TextTokenizer):

    c = model.cfg
    return LlamaConfig(
        vocab_size=c.vocab_size, hidden_size=c.d_model, intermediate_size=c.ffn_hidden,
        num_hidden_layers=c.n_layers, num_attention_heads=c.n_heads, num_key_value_heads=c.n_kv_heads,
        head_dim=c.d_model // c.n_heads, hidden_act="silu", max_position_embeddings=c.max_seq_len,
        rms_norm_eps=c.norm_eps, rope_parameters={"rope_type": "default", "rope_theta": c.rope_theta},
        tie_word_embeddings=True, attention_bias=False, mlp_bias=False,
        bos_token_id=None, eos_token_id=[tok.eos_id, tok.end_id], pad_token_id=tok.pad_id,
        dtype="float32", architectures=["LlamaForCausalLM"])


def export_hf(model: Transformer, tok: TextTokenizer, out: Path, provenance: dict | None = None) -> Path:
    """Write `out` (new or empty) atomically: config, weights (safetensors), tokenizer, chat template."""

    check_export_folder(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        partial = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=PARTIAL, dir=out.parent))
        lock = os.open(partial, os.O_RDONLY)
    except OSError as err:
        raise ExportError(f"--to {out} cannot be written ({_reason(err)}); choose another folder") from None
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)  # held until the export ends or dies: marks `partial` as live
        remove_stale_partials(out.parent)
        tmp = partial / _INNER
        tmp.mkdir()
        hf = LlamaForCausalLM(llama_config(model, tok))
        missing, unexpected = hf.load_state_dict(hf_state_dict(model), strict=False)
        if unexpected or [k for k in missing if k != "lm_head.weight"]:
            raise ExportError(f"weights do not map onto LlamaForCausalLM: missing {missing}, unexpected {unexpected}")
        hf.tie_weights()
        hf.save_pretrained(tmp, safe_serialization=True)
        fast = PreTrainedTokenizerFast(tokenizer_object=tok.tok, eos_token=EOS, pad_token=PAD,
                                       additional_special_tokens=[USER, ASSISTANT, END, tok.tag])
        fast.chat_template = CHAT_TEMPLATE
        fast.save_pretrained(tmp)
        (tmp / "safepretrain.json").write_text(json.dumps(
            {"chat_format": "<|user|>{prompt}<|end|><|assistant|>{response}<|end|>", "harm_tag": tok.tag,
             "harm_tag_id": tok.tag_id, **(provenance or {})}, indent=2) + "\n")
        _apply_umask(tmp)
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    except OSError as err:  # a full disk, a vanished folder: the reason, not a traceback
        raise ExportError(f"--to {out} could not be written ({_reason(err)}); nothing was exported") from None
    finally:
        shutil.rmtree(partial, ignore_errors=True)
        os.close(lock)
    return out


def export_checkpoint(checkpoint: Path, out: Path) -> Path:
    """Export a checkpoint folder of a run directory: the model config it records (checked against the run's
    study.yaml) and the run's tokenizer."""
    if not (checkpoint / "model.safetensors").is_file():
        raise ExportError(f"{checkpoint} is not a checkpoint folder (no model.safetensors); give e.g. "
                          "RUN/arms/raw/seed0/ift/ckpt/step_000064")
    check_export_folder(out)  # before the model loads: a bad --to fails at once
    try:
        rundir = RunDir.containing(checkpoint.resolve())
        cfg = rundir.load_config()
        tok = rundir.tokenizer(cfg)
        model = rundir.model(cfg, checkpoint, "cpu", tok)
    except (RunDirError, ConfigError, CheckpointError) as err:
        raise ExportError(str(err)) from None
    source = relative_to_run(checkpoint, rundir.root)
    return export_hf(model, tok, out, provenance={"study": cfg.name, "checkpoint": source})
