"""Schedules and the curriculum sampler: the switch lands exactly at start * budget, to the batch.

    python -m pytest tests/test_curriculum.py -q
"""

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest

from safepretrain.config import ArmConfig, ConfigError, CurriculumConfig, load_config
from safepretrain.data.shards import load_shards, write_shard
from safepretrain.train.curriculum import (
    CurriculumSampler,
    arm_schedule,
    check_data_budget,
    describe_arm,
    dose_plan,
    intervention_tokens,
    match_dose,
    mix_weights,
)

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


# --------------------------------------------------------------------------- beyond one start
# Recorded from the implementation before per-stream starts, ramps, stream sets and dose existed (budget 64,000,
# batch 8 x 64, seed 3): the default arms must keep sampling exactly these batches and token counts.
PINNED = {
    "raw": ("274574be85d4131cde63aea874e613fa8425a1a05541061b94887edb852a263c", None,
            {"safe": 53184, "unsafe": 10816}, {}),
    "start_0": ("15accbbe97f4d21f411fcd2e7278ebc8e45482f83ba061a9ceb31a42a9dbbee0", 0, {},
                {"moral_ed": 1920, "refusal": 4928, "rephrased": 7360, "safe": 40832, "tagged": 8960}),
    "start_20": ("321e1dcd9280d9c0b08e46274f93085c150552527d1a0c2d826a32d953802975", 25, {"safe": 12800},
                 {"moral_ed": 1536, "refusal": 3968, "rephrased": 6144, "safe": 32704, "tagged": 6848}),
    "start_60": ("27607911a9a96dbee5b1d4d72f1775e4ae014b55455be355a60e68ae94637759", 75, {"safe": 38400},
                 {"moral_ed": 704, "refusal": 2176, "rephrased": 2944, "safe": 16512, "tagged": 3264}),
    "safe_only": ("633eff61c1e60e14659db51b3972f0abb29173833ee7492000cf693bbf10ccb9", None, {"safe": 64000}, {}),
}


def test_default_arms_sample_bit_identically_to_before(shards):
    cfg = cur()
    assert [a.name for a in cfg.arms] == list(PINNED)
    for arm in cfg.arms:
        s = CurriculumSampler(arm_schedule(arm, cfg, STREAM_TOKENS), shards, 8, 64, seed=3)
        digest = hashlib.sha256()
        for step in (0, 1, 24, 25, 26, 74, 75, 76, 124):
            x, y, info = s.batch(step)
            digest.update(x.numpy().tobytes()), digest.update(y.numpy().tobytes())
            digest.update(json.dumps(info).encode())
        sha, switch, before, after = PINNED[arm.name]
        acc = s.tokens_by_source()
        assert (digest.hexdigest(), acc["switch_step"], acc["before_switch"], acc["after_switch"]) == \
            (sha, switch, before, after), arm.name


LADDER = {"rephrased": 0.2, "refusal": 0.6, "moral_ed": 0.6, "tagged": 0.0}


def test_per_intervention_starts_switch_each_stream_exactly_at_its_start():
    cfg, tps = cur(), 512
    arm = ArmConfig(name="a", starts={**LADDER, "refusal": 0.37})
    assert arm.start == 0.0  # the switch is the earliest start
    sched = arm_schedule(arm, cfg, STREAM_TOKENS)
    assert sched.switch_step(tps) == 0
    expected = {0: {"safe", "tagged"}, 12800: {"safe", "tagged", "rephrased"},
                23680: {"safe", "tagged", "rephrased", "refusal"},
                38400: {"safe", "tagged", "rephrased", "refusal", "moral_ed"}}
    bounds = sorted(expected)
    for i, b in enumerate(bounds):
        step = math.ceil(b / tps)  # 0, 25, 47 (0.37 is not on a step boundary), 75
        assert set(sched.weights_at(step * tps)) == expected[b]
        assert set(sched.weights_at((step + 1) * tps)) == expected[b]
        if i:
            assert set(sched.weights_at((step - 1) * tps)) == expected[bounds[i - 1]]
    assert sched.phases[-1].name == "interventions" and sched.phases[0].name == "interventions:tagged"
    # a stream that starts at 1 never appears; the others are unaffected
    late = arm_schedule(ArmConfig(name="b", start=0.2, starts={"tagged": 1.0}), cfg, STREAM_TOKENS)
    assert late.switch_step(tps) == 25
    assert all("tagged" not in late.weights_at(step * tps) for step in range(cfg.token_budget // tps))
    assert "rephrased" in late.weights_at(25 * tps) and "rephrased" not in late.weights_at(24 * tps)


def test_sampler_reads_only_the_streams_active_at_each_step(shards):
    arm = ArmConfig(name="a", starts=LADDER)
    s = CurriculumSampler(arm_schedule(arm, cur(), STREAM_TOKENS), shards, 8, 64, seed=1)
    for step, allowed in ((0, {"safe", "tagged"}), (24, {"safe", "tagged"}), (25, {"safe", "tagged", "rephrased"}),
                          (74, {"safe", "tagged", "rephrased"}), (75, set(LADDER) | {"safe"})):
        assert set(s.sources(step)) <= allowed
    assert set(s.tokens_by_source()["total"]) == set(LADDER) | {"safe"}


def test_ramps_rise_linearly_and_are_exact_at_both_ends():
    cfg, tps = cur(), 512
    sched = arm_schedule(ArmConfig(name="a", start=0.2, ramp=0.1), cfg, STREAM_TOKENS)
    start, end = 12800, 12800 + 6400  # steps 25 and 37.5: the ramp ends inside step 37
    full = sched.phases[-1].weights
    assert sched.switch_step(tps) == 25 and sched.phase_at(start).interventions
    assert sched.weights_at(start - 1) == {"safe": 1.0}
    assert sched.weights_at(start) == {"safe": 1.0}  # weight 0 at the start: the switch step still reads safe text
    mid = sched.weights_at((start + end) / 2)
    for s in ("rephrased", "refusal", "moral_ed", "tagged"):
        assert mid[s] == pytest.approx(full[s] / 2)
        assert sched.weights_at(start + 1)[s] == pytest.approx(full[s] / 6400)
    assert sum(mid.values()) == pytest.approx(1.0)
    assert sched.weights_at(end) is full and sched.weights_at(end + 1) is full
    assert sched.weights_at(end - 1)["tagged"] == pytest.approx(full["tagged"] * 6399 / 6400)
    # expected tokens integrate the ramp exactly: half the ramp's length at full weight is lost to safe text
    got = sched.expected_tokens()
    assert got["tagged"] == pytest.approx(full["tagged"] * (64000 - start - 6400 / 2))
    assert sum(got.values()) == pytest.approx(64000)
    # a ramp from the first token: step 0 reads only safe text
    s0 = arm_schedule(ArmConfig(name="b", start=0.0, ramp=0.5), cfg, STREAM_TOKENS)
    assert s0.weights_at(0) == {"safe": 1.0} and "tagged" in s0.weights_at(tps)


def test_stream_sets_restrict_what_an_arm_reads_after_its_start():
    cfg = cur(arms=[{"name": "r", "start": 0.0, "streams": ["safe", "rephrased"]}])
    sched = arm_schedule(cfg.arms[0], cfg, STREAM_TOKENS)
    assert sched.phases[0].weights == mix_weights(["safe", "rephrased"], STREAM_TOKENS, cfg.upsample)


def test_matched_dose_equalises_expected_intervention_tokens():
    prop, matched = cur(), cur(dose="matched")
    own = {a.name: intervention_tokens(arm_schedule(a, prop, STREAM_TOKENS), prop) for a in prop.arms[1:]}
    assert own["start_0"] > own["start_20"] > own["start_60"] > own["safe_only"] == 0  # the papers' confound
    got = {a.name: intervention_tokens(arm_schedule(a, matched, STREAM_TOKENS), matched) for a in matched.arms[1:]}
    for arm in ("start_0", "start_20", "start_60"):
        assert got[arm] == pytest.approx(own["start_60"], rel=1e-9)
    assert got["safe_only"] == 0 and match_dose(matched, STREAM_TOKENS).excluded == ("safe_only",)
    # the mix of interventions is kept, only its dose changes; safe text fills the rest
    w = arm_schedule(matched.arms[1], matched, STREAM_TOKENS).phases[0].weights
    full = arm_schedule(prop.arms[1], prop, STREAM_TOKENS).phases[0].weights
    assert w["tagged"] / w["refusal"] == pytest.approx(full["tagged"] / full["refusal"])
    assert w["safe"] > full["safe"] and sum(w.values()) == pytest.approx(1.0)
    # an arm that starts later than every matched arm has no room for the matched dose
    with pytest.raises(ValueError, match="no room"):
        arm_schedule(ArmConfig(name="late", start=0.9), matched, STREAM_TOKENS)
    with pytest.raises(ValueError, match="dose=matched needs a curriculum arm"):
        cur(dose="matched", arms=[{"name": "a", "start": 1.0}, {"name": "r", "data": "raw"}])
    with pytest.raises(ValueError, match="dose=matched needs a curriculum arm"):  # starts that hold no tokens
        arm_schedule(matched.arms[1], matched, {**STREAM_TOKENS, **dict.fromkeys(LADDER, 0)})


def test_max_repeats_fails_naming_stream_arm_and_numbers():

    check_data_budget(cur(), STREAM_TOKENS)  # unlimited by default
    check_data_budget(cur(max_repeats=100), STREAM_TOKENS)
    with pytest.raises(ValueError, match=r"arm 'start_0' expects 4,923 tokens of stream 'refusal', 49.23 passes "
                                         r"over its 100 tokens \(max_repeats=10"):
        check_data_budget(cur(max_repeats=10), STREAM_TOKENS)


@pytest.mark.parametrize("arm, message", [
    ({"name": "a", "start": 0.0, "starts": {"refusal": 1.5}}, r"starts\[refusal\]=1.5 is outside \[0, 1\]"),
    ({"name": "a", "start": 0.0, "starts": {"nope": 0.5}}, r"starts names unknown stream\(s\) \['nope'\]"),
    ({"name": "a", "start": 0.0, "starts": {"unsafe": 0.5}}, r"\.starts names \['unsafe'\], which this arm"),
    ({"name": "a", "start": 0.0, "starts": {"refusal": 0.5}, "streams": ["safe", "rephrased"]},
     r"starts names \['refusal'\]"),
    ({"name": "a", "start": 0.0, "streams": ["safe", "nope"]}, r"streams names unknown stream\(s\) \['nope'\]"),
    ({"name": "a", "start": 0.0, "streams": ["unsafe"]}, r"streams has \['unsafe'\], which are not in"),
    ({"name": "a", "start": 0.0, "streams": ["safe"]}, "has no intervention stream"),
    ({"name": "a", "start": 0.0, "ramp": -0.1}, "greater than or equal to 0"),
    ({"name": "a", "start": 0.95, "ramp": 0.1}, r"start=0.95 \+ ramp=0.1 passes the end"),
    ({"name": "a", "start": 0.2, "starts": {"tagged": 0.95}, "ramp": 0.1}, r"starts\[tagged\]=0.95 \+ ramp"),
    ({"name": "a", "start": 0.5, "starts": {"tagged": 0.1}}, r"begin before start=0.5.*set start: 0.1"),
    ({"name": "a", "start": 0.2, "starts": {s: 0.6 for s in LADDER}}, "earliest intervention starts at 0.6"),
    ({"name": "r", "data": "raw", "streams": ["safe"]}, r"data=raw, which never switches; remove \['streams'\]"),
])
def test_curriculum_fields_are_validated_with_messages_that_name_them(arm, message):

    with pytest.raises(ValueError, match=message):
        cur(arms=[arm])
    with pytest.raises(ValueError, match=r"curriculum(\.arms\.0|: arms\[0\])"):  # the loader names the arm
        load_config(None, [f"curriculum.arms=[{json.dumps(arm)}]"])


def test_ablation_ladder_config_adds_one_intervention_per_rung():

    cfg = load_config(Path(__file__).parents[1] / "configs" / "ablation-ladder.yaml")
    c = cfg.curriculum
    read = [set(arm_schedule(a, c, STREAM_TOKENS).weights_at(c.token_budget - 1)) for a in c.arms]
    assert read[0] == {"safe", "unsafe"} and read[1] == {"safe"}
    rungs = ["rephrased", "refusal", "moral_ed", "tagged"]
    for i in range(len(rungs)):
        assert read[2 + i] == {"safe", *rungs[:i + 1]}
        assert cfg.switch_step(c.arms[2 + i]) == 0


def test_plan_lines_describe_starts_ramps_and_who_is_left_out_of_matching():

    cfg = cur(dose="matched", arms=[{"name": "x", "starts": LADDER, "ramp": 0.1}, {"name": "s", "start": 1.0}])
    assert describe_arm(cfg.arms[0], cfg) == ("['safe'] + tagged from 0%, rephrased from 20%, refusal+moral_ed "
                                              "from 60%, each ramped in over 10% of the budget, dose matched")
    assert describe_arm(cfg.arms[1], cfg) == "['safe'] throughout (interventions never start)"
    assert dose_plan(cfg).endswith("left out, no intervention tokens: ['s']") and dose_plan(cur()) is None


def test_only_arms_that_read_tagged_text_get_tag_annotated_instruction_data():

    cfg = load_config(str(Path(__file__).parents[1] / "configs" / "ablation-ladder.yaml"))
    tags = {a.name: cfg.saw_tags(a) for a in cfg.curriculum.arms}
    assert tags == {"raw": False, "score0_only": False, "rephrase": False, "refusal": False, "moral_ed": False,
                    "tags": True}


# ---- explicit phase lists ---------------------------------------------------------------------------------------
PHASES = [{"start": 0.0, "end": 0.25, "weights": {"safe": 1}},
          {"start": 0.25, "end": 0.5, "weights": {"safe": 3, "refusal": 1}, "name": "refusal_only"},
          {"start": 0.5, "end": 1.0, "weights": {"safe": 1, "refusal": 1, "tagged": 2}}]


def test_explicit_phases_switch_weights_and_accounting_at_every_boundary(shards):
    cfg, tps = cur(), 512
    arm = ArmConfig(name="p", phases=PHASES)
    assert cfg.model_copy(update={"arms": [arm]}).arms[0].start == 0.25  # the switch: the first non-safe phase
    sched = arm_schedule(arm, cfg, STREAM_TOKENS)
    assert [p.name for p in sched.phases] == ["phase0", "refusal_only", "phase2"]
    for boundary, before, after in [(16_000, {"safe": 1.0}, {"safe": 0.75, "refusal": 0.25}),
                                    (32_000, {"safe": 0.75, "refusal": 0.25},
                                     {"safe": 0.25, "refusal": 0.25, "tagged": 0.5})]:
        assert sched.weights_at(boundary - 1) == before
        assert sched.weights_at(boundary) == after == sched.weights_at(boundary + 1)
    assert sched.switch_step(tps) == math.ceil(16_000 / tps)
    expected = sched.expected_tokens()  # piecewise constant: 16k safe, 12k + 4k, then 8k + 8k + 16k
    assert expected == pytest.approx({"safe": 16_000 + 12_000 + 8_000, "refusal": 4_000 + 8_000, "tagged": 16_000})
    acc = CurriculumSampler(sched, shards, 8, 64, seed=0).tokens_by_source()
    assert set(acc["by_phase"]) == {"phase0", "refusal_only", "phase2"} and acc["dose_scale"] == 1.0
    assert set(acc["by_phase"]["phase0"]) == {"safe"} and set(acc["by_phase"]["refusal_only"]) <= {"safe", "refusal"}
    summed = {}
    for tokens in acc["by_phase"].values():
        for s, n in tokens.items():
            summed[s] = summed.get(s, 0) + n
    assert summed == acc["total"]


def test_phase_blend_is_linear_between_phases_and_integrates_exactly():
    cfg = cur()
    sched = arm_schedule(ArmConfig(name="p", phases=PHASES, ramp=0.125), cfg, STREAM_TOKENS)  # 8,000 tokens
    assert sched.weights_at(15_999) == {"safe": 1.0}
    assert sched.weights_at(16_000) == pytest.approx({"safe": 1.0})
    assert sched.weights_at(20_000) == pytest.approx({"safe": 0.875, "refusal": 0.125})  # halfway
    assert sched.weights_at(24_000) == {"safe": 0.75, "refusal": 0.25}  # blend over: the phase's own weights
    # [16k, 24k) blends at mean weights, [24k, 32k) phase 1, [32k, 40k) blends into phase 2, [40k, 64k) phase 2
    exact = {"safe": 16_000 + 8_000 * 0.875 + 8_000 * 0.75 + 8_000 * 0.5 + 24_000 * 0.25,
             "refusal": 8_000 * 0.125 + 8_000 * 0.25 + 8_000 * 0.25 + 24_000 * 0.25,
             "tagged": 8_000 * 0.25 + 24_000 * 0.5}
    assert sched.expected_tokens() == pytest.approx(exact)


def test_matched_dose_scales_explicit_phases_and_records_the_scale(shards):
    cfg = cur(dose="matched", arms=[ArmConfig(name="p", phases=PHASES), ArmConfig(name="late", start=0.6)])
    sched = arm_schedule(cfg.arms[0], cfg, STREAM_TOKENS)
    late = arm_schedule(cfg.arms[1], cfg, STREAM_TOKENS)
    inter = lambda s: sum(n for k, n in s.expected_tokens().items() if k != "safe")  # noqa: E731
    assert inter(sched) == pytest.approx(inter(late)) and 0 < sched.dose_scale < 1
    assert CurriculumSampler(sched, shards, 8, 64, seed=0).tokens_by_source()["dose_scale"] == sched.dose_scale


@pytest.mark.parametrize("phases, named", [
    ([{"start": 0.0, "end": 0.5, "weights": {"safe": 1}}, {"start": 0.4, "end": 1.0, "weights": {"safe": 1}}],
     "overlaps"),
    ([{"start": 0.0, "end": 0.5, "weights": {"safe": 1}}, {"start": 0.6, "end": 1.0, "weights": {"safe": 1}}],
     "leaves a gap"),
    ([{"start": 0.1, "end": 1.0, "weights": {"safe": 1}}], "phases[0].start"),
    ([{"start": 0.0, "end": 0.9, "weights": {"safe": 1}}], "phases[0].end"),
    ([{"start": 0.0, "end": 1.0, "weights": {"safe": 1, "refusal": -1}}], "must be >= 0"),
    ([{"start": 0.0, "end": 1.0, "weights": {"safe": 0}}], "all zero"),
    ([{"start": 0.0, "end": 1.0, "weights": {"sfe": 1}}], "unknown stream"),
])
def test_bad_phase_lists_are_refused_naming_the_field(phases, named):

    arms = json.dumps([{"name": "p", "phases": phases}])
    with pytest.raises(ConfigError) as err:
        load_config(None, [f"curriculum.arms={arms}"])
    assert named in str(err.value) and "phases" in str(err.value)
