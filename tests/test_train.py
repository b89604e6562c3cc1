"""The training loop: LR schedules, checkpoints, and exact resume after a kill.

    python -m pytest tests/test_train.py -q
"""

import json
import logging

import pytest
import torch
from safetensors.torch import load_file

from safepretrain.config import ModelConfig, PretrainConfig
from safepretrain.run.stages import _branch
from safepretrain.train.loop import lr_at, train
from safepretrain.utils import log

MODEL = ModelConfig(d_model=32, n_layers=2, n_heads=2, n_kv_heads=2, ffn_hidden=64, max_seq_len=32, vocab_size=64)


class Batches:
    """Deterministic batches; `die_at` simulates a kill (the process dies mid-run)."""

    def __init__(self, steps, die_at=None):
        self.total_steps, self.die_at = steps, die_at

    def batch(self, step):
        if step == self.die_at:
            raise KeyboardInterrupt("simulated kill")
        g = torch.Generator().manual_seed(step)
        data = torch.randint(0, 64, (4, 17), generator=g)
        return data[:, :-1], data[:, 1:], {"phase": "p", "interventions": step >= 5}


def cfg(**kw):
    return PretrainConfig(**{"batch_size": 4, "seq_len": 16, "lr": 1e-2, "warmup_steps": 2, **kw})


@pytest.mark.parametrize("schedule", ["cosine", "wsd", "constant"])
def test_lr_schedules(schedule):
    c = cfg(schedule=schedule, min_lr_ratio=0.1, decay_fraction=0.25)
    lrs = [lr_at(s, 20, c) for s in range(20)]
    assert lrs[0] == pytest.approx(0.005) and lrs[1] == pytest.approx(0.01)  # linear warmup
    assert max(lrs) == pytest.approx(0.01)
    if schedule == "constant":
        assert lrs[-1] == pytest.approx(0.01)
    else:
        assert lrs[-1] == pytest.approx(0.001, rel=0.2)
    if schedule == "wsd":
        assert lrs[2:15] == [pytest.approx(0.01)] * 13 and lrs[15] < 0.01  # stable, then decay over the last 25%


def test_resume_after_kill_matches_an_uninterrupted_run(tmp_path):
    full = train(cfg(ckpt_every=4), MODEL, Batches(10), tmp_path / "full", seed=0, label="full")
    with pytest.raises(KeyboardInterrupt):
        train(cfg(ckpt_every=4), MODEL, Batches(10, die_at=6), tmp_path / "killed", seed=0, label="killed")
    assert sorted(p.name for p in (tmp_path / "killed" / "ckpt").glob("step_*")) == ["step_000004"]
    resumed = train(cfg(ckpt_every=4), MODEL, Batches(10), tmp_path / "killed", seed=0, label="killed")
    a = load_file(str(full.checkpoint / "model.safetensors"))
    b = load_file(str(resumed.checkpoint / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    steps = [json.loads(x)["step"] for x in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 11))  # no step logged twice, none missing


def test_step_lines_show_interventions(tmp_path):


    class Collect(logging.Handler):
        lines: list[str] = []

        def emit(self, record):
            self.lines.append(record.getMessage())

    handler = Collect()
    log.addHandler(handler)
    level = log.level
    log.setLevel(logging.INFO)
    try:
        train(cfg(), MODEL, Batches(7), tmp_path, seed=0, label="t")
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
    lines = [ln for ln in handler.lines if "] step " in ln]
    assert len(lines) == 7
    assert ["interv=on" in ln for ln in lines] == [False] * 5 + [True] * 2


def test_post_training_starts_from_given_weights(tmp_path):
    first = train(cfg(), MODEL, Batches(3), tmp_path / "a", seed=0, label="a")
    second = train(cfg(lr=1e-12, warmup_steps=0), MODEL, Batches(1), tmp_path / "b", seed=1, label="b",
                   init_from=first.checkpoint)
    a = load_file(str(first.checkpoint / "model.safetensors"))
    b = load_file(str(second.checkpoint / "model.safetensors"))
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


class SwitchBatches(Batches):
    """The same batches as `Batches` until `switch`, other data after it (an arm leaving the safe-only trunk)."""

    def __init__(self, steps, switch):
        super().__init__(steps)
        self.switch = switch

    def batch(self, step):
        if step < self.switch:
            return super().batch(step)
        g = torch.Generator().manual_seed(1000 + step)
        data = torch.randint(0, 64, (4, 17), generator=g)
        return data[:, :-1], data[:, 1:], {"phase": "mix", "interventions": True}


def test_branch_from_trunk_equals_a_separate_run(tmp_path):
    """An arm branched from the shared trunk at its switch step is bit-identical to training it alone (fp32)."""

    separate = train(cfg(), MODEL, SwitchBatches(10, switch=6), tmp_path / "separate", seed=0, label="sep")
    trunk = train(cfg(), MODEL, Batches(10), tmp_path / "trunk", seed=0, label="trunk", stop_at=8, save_at=(3, 6))
    assert trunk.steps == 8
    assert sorted(p.name for p in (tmp_path / "trunk" / "ckpt").glob("step_*")) == [
        "step_000003", "step_000006", "step_000008"]
    _branch(tmp_path / "trunk" / "ckpt", 6, tmp_path / "arm")
    branched = train(cfg(), MODEL, SwitchBatches(10, switch=6), tmp_path / "arm", seed=0, label="arm")
    a = load_file(str(separate.checkpoint / "model.safetensors"))
    b = load_file(str(branched.checkpoint / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    sep_metrics = (tmp_path / "separate" / "metrics.jsonl").read_text().splitlines()
    arm_metrics = (tmp_path / "arm" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in arm_metrics] == list(range(1, 11))
    assert [json.loads(x)["loss"] for x in arm_metrics] == [json.loads(x)["loss"] for x in sep_metrics]
