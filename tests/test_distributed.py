"""Gradient accumulation, activation checkpointing, DDP / FSDP2 on 2 gloo processes, and DCP checkpoints.

Every multi-process run trains the same global batches as a one-process reference, so per-step losses must
agree to fp32 round-off; a run killed after a checkpoint resumes at another world size.

    python -m pytest tests/test_distributed.py -q
"""

import json
import logging
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from safepretrain.config import ModelConfig, PretrainConfig
from safepretrain.train.loop import train
from safepretrain.train.model import Transformer

MODEL = ModelConfig(d_model=32, n_layers=2, n_heads=2, n_kv_heads=2, ffn_hidden=64, max_seq_len=32, vocab_size=64)
STEPS = 6
pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")


class Batches:
    """Deterministic global batches (8 rows, some targets ignored); `die_at` simulates a kill."""

    def __init__(self, steps=STEPS, die_at=None, kill=KeyboardInterrupt):
        self.total_steps, self.die_at, self.kill = steps, die_at, kill

    def batch(self, step):
        if step == self.die_at:
            raise self.kill("simulated kill")
        g = torch.Generator().manual_seed(step)
        data = torch.randint(0, 64, (8, 17), generator=g)
        y = data[:, 1:].clone()
        y[step % 8, : 4 + step] = -100  # uneven target counts per row: the loss weighting must handle it
        return data[:, :-1], y, {"phase": "p", "interventions": False}


def cfg(**kw):
    return PretrainConfig(**{"batch_size": 8, "seq_len": 16, "lr": 1e-2, "warmup_steps": 2, **kw})


def losses(run: Path) -> list[float]:
    return [json.loads(ln)["loss"] for ln in (run / "metrics.jsonl").read_text().splitlines()]


def max_abs_diff(a: list[float], b: list[float]) -> float:
    assert len(a) == len(b)
    return max(abs(x - y) for x, y in zip(a, b))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out: str, cfg_kw: dict, die_at) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)  # two processes on a two-core machine
    # RuntimeError, not KeyboardInterrupt: mp.spawn treats a KeyboardInterrupt in a child as a clean exit
    train(cfg(**cfg_kw), MODEL, Batches(die_at=die_at, kill=RuntimeError), Path(out), seed=0, label=f"rank{rank}")


def run_ranks(out: Path, die_at=None, world=2, **cfg_kw) -> None:
    mp.spawn(_worker, args=(world, _free_port(), str(out), cfg_kw, die_at), nprocs=world, join=True)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ref")
    train(cfg(), MODEL, Batches(), out, seed=0, label="ref")
    return out


# --------------------------------------------------------------------------- one process
def test_grad_accumulation_matches_one_shot_step(reference, tmp_path):
    train(cfg(grad_accum_steps=4), MODEL, Batches(), tmp_path, seed=0, label="accum")
    assert max_abs_diff(losses(tmp_path), losses(reference)) < 1e-5
    a = load_file(str(reference / "ckpt" / "step_000006" / "model.safetensors"))
    b = load_file(str(tmp_path / "ckpt" / "step_000006" / "model.safetensors"))
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)


def test_micro_batches_without_targets_and_a_world_of_one(reference, tmp_path):
    class PromptOnlyRow(Batches):  # post-training: a row can be all prompt (-100), so one micro-batch has no targets
        def batch(self, step):
            x, y, info = super().batch(step)
            y[3] = -100
            return x, y, info

    train(cfg(), MODEL, PromptOnlyRow(), tmp_path / "one", seed=0, label="one")
    train(cfg(grad_accum_steps=8), MODEL, PromptOnlyRow(), tmp_path / "accum", seed=0, label="accum")
    assert max_abs_diff(losses(tmp_path / "accum"), losses(tmp_path / "one")) < 1e-5
    # fsdp2 without torchrun: a process group of one in this process, started and ended by train()
    train(cfg(distributed="fsdp2"), MODEL, Batches(), tmp_path / "fsdp1", seed=0, label="fsdp1")
    assert not torch.distributed.is_initialized()
    assert max_abs_diff(losses(tmp_path / "fsdp1"), losses(reference)) < 1e-5


def test_activation_checkpointing_gives_the_same_loss_and_gradients():
    torch.manual_seed(0)
    model = Transformer(MODEL).train()
    x, y, _ = Batches().batch(0)
    grads = []
    for on in (False, True):
        model.zero_grad()
        model.activation_checkpointing = on
        _, loss = model(x, targets=y)
        loss.backward()
        grads.append((loss.item(), [p.grad.clone() for p in model.parameters()]))
    assert grads[0][0] == grads[1][0]
    assert all(torch.allclose(a, b, atol=1e-7) for a, b in zip(grads[0][1], grads[1][1]))


def test_dcp_checkpoints_prune_and_skip_a_corrupt_latest(reference, tmp_path, caplog):
    kw = dict(checkpoint_format="dcp", ckpt_every=2, keep_checkpoints=2)
    with pytest.raises(KeyboardInterrupt):
        train(cfg(**kw), MODEL, Batches(die_at=5), tmp_path, seed=0, label="dcp")
    ckpts = sorted(p.name for p in (tmp_path / "ckpt").glob("step_*"))
    assert ckpts == ["step_000002", "step_000004"]  # step 2, 4 kept (keep 2); nothing half-written
    (tmp_path / "ckpt" / "step_000004" / ".metadata").write_bytes(b"garbage")  # a corrupt latest checkpoint
    with caplog.at_level(logging.WARNING):
        res = train(cfg(**kw), MODEL, Batches(), tmp_path, seed=0, label="dcp")
    assert "step_000004" in caplog.text and "unreadable" in caplog.text
    assert max_abs_diff(losses(tmp_path), losses(reference)) == 0.0  # same kernels, one process: exact
    assert (res.checkpoint / "model.safetensors").is_file()  # consolidated weights for eval/export
    assert sorted(p.name for p in (tmp_path / "ckpt").glob("step_*")) == ["step_000004", "step_000006"]


# --------------------------------------------------------------------------- two gloo processes
@pytest.mark.parametrize("mode", ["ddp", "fsdp2"])
def test_two_ranks_match_one_process(mode, reference, tmp_path):
    run_ranks(tmp_path, distributed=mode, grad_accum_steps=2, activation_checkpointing=mode == "fsdp2")
    diff = max_abs_diff(losses(tmp_path), losses(reference))
    print(f"{mode}: max abs loss diff vs one process = {diff:.3g}")
    assert diff < 1e-5 * max(losses(reference))
    a = load_file(str(reference / "ckpt" / "step_000006" / "model.safetensors"))
    b = load_file(str(tmp_path / "ckpt" / "step_000006" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)


def test_killed_two_rank_run_resumes_in_one_process(reference, tmp_path):
    with pytest.raises(mp.ProcessRaisedException, match="simulated kill"):
        run_ranks(tmp_path, die_at=3, distributed="fsdp2", ckpt_every=2)
    assert sorted(p.name for p in (tmp_path / "ckpt").glob("step_*")) == ["step_000002"]
    train(cfg(checkpoint_format="dcp", ckpt_every=2), MODEL, Batches(), tmp_path, seed=0, label="resumed")
    diff = max_abs_diff(losses(tmp_path), losses(reference))
    print(f"2 -> 1 resume: max abs loss diff = {diff:.3g}")
    assert [json.loads(ln)["step"] for ln in (tmp_path / "metrics.jsonl").read_text().splitlines()] == \
        list(range(1, STEPS + 1))
    assert diff < 1e-5 * max(losses(reference))


def test_one_process_checkpoint_resumes_on_two_ranks(reference, tmp_path):
    with pytest.raises(KeyboardInterrupt):
        train(cfg(checkpoint_format="dcp", ckpt_every=2), MODEL, Batches(die_at=3), tmp_path, seed=0, label="one")
    run_ranks(tmp_path, distributed="ddp", ckpt_every=2)
    diff = max_abs_diff(losses(tmp_path), losses(reference))
    print(f"1 -> 2 resume: max abs loss diff = {diff:.3g}")
    assert diff < 1e-5 * max(losses(reference))
