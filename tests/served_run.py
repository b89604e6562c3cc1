"""A served checkpoint for the serve and client tests: a run directory laid out as a study writes it (marker,
study.yaml, tokenizer, checkpoint) with random weights (the server needs the layout and a model, not a trained
one), and uvicorn on a free loopback port in a background thread."""

import socket
import threading
import time
from pathlib import Path

import torch
import uvicorn
from safetensors.torch import save_model

from safepretrain.config import dump_config, load_config
from safepretrain.data.tokenizer import TextTokenizer, train_tokenizer
from safepretrain.rundir import RUN_MARKER
from safepretrain.train.model import Transformer

CONTEXT = 128
MODEL = "arms/raw/seed0/ift/ckpt/step_000004"  # the checkpoint's path in its run: unique per arm, seed, stage
TINY = ["model.preset=null", "model.d_model=32", "model.n_layers=1", "model.n_heads=2", "model.n_kv_heads=2",
        "model.ffn_hidden=64", f"model.max_seq_len={CONTEXT}"]
CORPUS = "plain words about rivers, towns and the weather – café"


def make_checkpoint(run: Path, corpus: str = CORPUS, vocab: int = 300, jitter: float = 0.0) -> Path:
    """The checkpoint folder of a fresh run in `run`; `jitter` moves every weight off its initial value (norms off
    1.0), so that a dropped or misnamed weight shows in the logits."""
    (run / RUN_MARKER).touch()
    cfg = load_config(None, TINY)
    (run / "study.yaml").write_text(dump_config(cfg))
    tag = cfg.data.interventions.tag
    tok = TextTokenizer(train_tokenizer([corpus] * 30, vocab, 1, tag), tag)
    (run / "data").mkdir()
    tok.save(run / "data" / "tokenizer.json")
    torch.manual_seed(0)
    model = Transformer(cfg.model.model_copy(update={"vocab_size": tok.vocab_size}))
    for p in model.parameters():
        p.data.add_(jitter * torch.randn_like(p))
    ckpt = run / MODEL
    ckpt.mkdir(parents=True)
    save_model(model, str(ckpt / "model.safetensors"))
    return ckpt


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """uvicorn in a background thread on a free loopback port."""

    def __init__(self, app):
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.02)
        self.url = f"http://127.0.0.1:{self.port}"

    def close(self):
        self.server.should_exit = True
        self.thread.join(timeout=10)
