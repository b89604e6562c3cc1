"""Schedules and the curriculum sampler: the switch lands exactly at start * budget, to the batch.

    python -m pytest tests/test_curriculum.py -q
"""

import math

import numpy as np
import pytest

from safepretrain.config import ArmConfig, CurriculumConfig
from safepretrain.curriculum import CurriculumSampler, arm_schedule, mix_weights
from safepretrain.data.shards import load_shards, write_shard

STREAM_TOKENS = {"safe": 5000, "unsafe": 1000, "rephrased": 800, "refusal": 100, "moral_ed": 300, "tagged": 1100}


@pytest.fixture
def shards(tmp_path):
    rng = np.random.default_rng(0)
    for i, (stream, n) in enumerate(STREAM_TOKENS.items()):
        # each stream's tokens live in their own id range, so a window reveals its stream
        write_shard(tmp_path, stream, [list(rng.integers(100 * (i + 1), 100 * (i + 1) + 50, size=n - 1))], eos_id=0)
    return load_shards(tmp_path)


def cur(budget=64_000, **kw):
    return CurriculumConfig(token_budget=budget, **kw)


@pytest.mark.parametrize("start", [0.2, 0.37, 0.6])
def test_switch_step_is_exactly_at_start_times_budget(start):
    cfg, tps = cur(), 512
    sched = arm_schedule(ArmConfig(name="a", start=start), cfg, STREAM_TOKENS)
    switch = sched.switch_step(tps)
    assert switch == math.ceil(start * cfg.token_budget / tps)
    # the step before is safe-only, the step at and after the switch carry the interventions
    assert not sched.phase_at((switch - 1) * tps).interventions
    assert sched.phase_at(switch * tps).interventions
    assert sched.phase_at((switch + 1) * tps).interventions


def test_start_zero_and_one_and_raw():
    cfg, tps = cur(), 512
    s0 = arm_schedule(ArmConfig(name="a", start=0.0), cfg, STREAM_TOKENS)
    assert s0.switch_step(tps) == 0 and s0.phase_at(0).interventions
    s1 = arm_schedule(ArmConfig(name="b", start=1.0), cfg, STREAM_TOKENS)
    assert s1.switch_step(tps) is None
    assert not any(s1.phase_at(step * tps).interventions for step in range(cfg.token_budget // tps))
    raw = arm_schedule(ArmConfig(name="raw", data="raw"), cfg, STREAM_TOKENS)
    assert raw.switch_step(tps) is None and set(raw.phase_at(0).weights) == {"safe", "unsafe"}


def test_mix_weights_follow_token_share_and_upsampling():
    w = mix_weights(["safe", "refusal"], {"safe": 900, "refusal": 100}, {"refusal": 6.0})
    assert w["refusal"] == pytest.approx(600 / 1500)
    assert mix_weights(["safe", "refusal"], {"safe": 10, "refusal": 0}, {}) == {"safe": 1.0}
    with pytest.raises(ValueError, match="hold no tokens"):
        mix_weights(["refusal"], {"refusal": 0}, {})


def test_batches_are_a_pure_function_of_seed_and_step(shards):
    sched = arm_schedule(ArmConfig(name="a", start=0.5), cur(), STREAM_TOKENS)
    a = CurriculumSampler(sched, shards, 8, 64, seed=3)
    b = CurriculumSampler(sched, shards, 8, 64, seed=3)
    for step in (0, 7, 90):
        xa, ya, _ = a.batch(step)
        xb, yb, _ = b.batch(step)
        assert xa.shape == (8, 64) and bool((xa == xb).all()) and bool((ya == yb).all())
        assert bool((xa[:, 1:] == ya[:, :-1]).all())  # targets are inputs shifted by one
    assert not bool((a.batch(5)[0] == CurriculumSampler(sched, shards, 8, 64, seed=4).batch(5)[0]).all())


def test_safe_phase_reads_only_safe_tokens_and_accounting_is_exact(shards):
    sched = arm_schedule(ArmConfig(name="a", start=0.5), cur(), STREAM_TOKENS)
    s = CurriculumSampler(sched, shards, 8, 64, seed=0)
    switch = sched.switch_step(s.tokens_per_step)
    x, _, info = s.batch(switch - 1)
    assert info["phase"] == "safe_only" and bool(((x >= 100) & (x < 150) | (x == 0)).all())
    acc = s.tokens_by_source()
    assert acc["switch_step"] == switch
    assert acc["before_switch"] == {"safe": switch * s.tokens_per_step}
    assert sum(acc["after_switch"].values()) == (s.total_steps - switch) * s.tokens_per_step
    assert "unsafe" not in acc["after_switch"]  # the interventions replace raw unsafe text with tagged copies
