"""Curriculum: which streams a pretraining step reads, as pure functions of tokens seen.

An arm's schedule is a list of phases. The papers' arms are two phases: safe-only data until
`start * budget` tokens, then the intervention mix; `raw` is one phase of untouched data. Beyond the papers,
an arm may start each intervention stream at its own fraction (`starts`: a phase boundary at each distinct
start), ramp each stream in linearly (`ramp`) and read only some streams (`streams`); `dose: matched` scales
the intervention weights per arm so every arm expects the same number of intervention tokens.

A step reads the weights in force at its first token, `Schedule.weights_at(step * tokens_per_step)`, so with
`tokens_per_step` T a boundary at token b takes effect at step ceil(b / T): exactly at b, to the batch.

`CurriculumSampler.batch(step)` is a pure function of (seed, step): resuming after a kill replays the
same batches, and tokens-per-source accounting is exact (`tokens_by_source`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from safepretrain.config import ArmConfig, CurriculumConfig
from safepretrain.config.base import ConfigError
from safepretrain.config.curriculum import first_step_at, intervention_starts
from safepretrain.data.shards import TokenShard


@dataclass(frozen=True)
class Phase:
    name: str  # "safe_only" | "interventions" | "interventions:<started streams>" (some still to start) | "raw"
    start_token: int  # first token of the budget in this phase
    weights: dict[str, float]  # stream -> sampling probability once every ramp is complete (sums to 1)
    interventions: bool
    fill: dict[str, float] = field(default_factory=dict)  # safe text that takes a ramping stream's missing weight


@dataclass(frozen=True)
class Ramp:
    """`stream`'s weight rises linearly from 0 at `start_token` to its full phase weight at `end_token`."""

    stream: str
    start_token: int
    end_token: int


@dataclass(frozen=True)
class Schedule:
    phases: tuple[Phase, ...]  # sorted by start_token; the first starts at 0
    budget: int
    ramps: tuple[Ramp, ...] = ()
    blend: int = 0  # explicit phases: tokens over which each phase's weights blend linearly in from the previous
    dose_scale: float = 1.0  # `dose: matched`: the factor on the intervention weights (1 = proportional)

    def phase_at(self, tokens_seen: float) -> Phase:
        """The phase in force after `tokens_seen` tokens."""
        current = self.phases[0]
        for phase in self.phases[1:]:
            if tokens_seen >= phase.start_token:
                current = phase
        return current

    def weights_at(self, tokens_seen: float) -> dict[str, float]:
        """Sampling weights after `tokens_seen` tokens: the phase's weights, each ramping stream scaled by how far
        its ramp has run (0 at its start, exact full weight from its end on) and the difference given to safe text.
        Without a running ramp this is the phase's own dict, so two-phase arms sample exactly as they always did."""
        phase = self.phase_at(tokens_seen)
        if self.blend and phase.start_token > 0 and tokens_seen < phase.start_token + self.blend:
            before = self.phase_at(phase.start_token - 1).weights
            a = (tokens_seen - phase.start_token) / self.blend  # 0 at the boundary, 1 at its end
            mixed = {s: (1 - a) * before.get(s, 0.0) + a * phase.weights.get(s, 0.0) for s in {*before, *phase.weights}}
            return {s: w for s, w in mixed.items() if w > 0}
        running = [r for r in self.ramps if r.stream in phase.weights and r.start_token <= tokens_seen < r.end_token]
        if not running:
            return phase.weights
        weights = dict(phase.weights)
        moved = 0.0
        for r in running:
            full = weights[r.stream]
            weights[r.stream] = full * (tokens_seen - r.start_token) / (r.end_token - r.start_token)
            moved += full - weights[r.stream]
        for s, share in phase.fill.items():
            weights[s] = weights.get(s, 0.0) + moved * share
        return {s: w for s, w in weights.items() if w > 0}

    def switch_step(self, tokens_per_step: int) -> int | None:
        """First step of the intervention phase, or None if it never starts within the budget."""
        phase = next((p for p in self.phases if p.interventions), None)
        return None if phase is None else first_step_at(phase.start_token, self.budget, tokens_per_step)

    def expected_tokens(self) -> dict[str, float]:
        """Expected tokens read from each stream over the budget: the integral of `weights_at` over [0, budget).
        Weights are linear between breakpoints (phase starts, ramp ends), so each piece's midpoint integrates it
        exactly. Steps sample at their first token, so realised counts differ by sampling noise and < 1 step per
        boundary."""
        marks = {0, self.budget, *(p.start_token for p in self.phases)}
        marks |= {t for r in self.ramps for t in (r.start_token, r.end_token)}
        marks |= {p.start_token + self.blend for p in self.phases} if self.blend else set()
        points = sorted(t for t in marks if 0 <= t <= self.budget)
        out: dict[str, float] = {}
        for a, b in zip(points, points[1:]):
            for s, w in self.weights_at((a + b) / 2).items():
                out[s] = out.get(s, 0.0) + w * (b - a)
        return out


def mix_weights(streams: list[str], stream_tokens: dict[str, int], upsample: dict[str, float]) -> dict[str, float]:
    """Natural token share of each stream times its upsampling factor, normalised.

    Empty streams get weight 0 (e.g. a world slice with no score-4 documents); if all are empty the
    mix cannot be sampled and that is an error the caller must see.
    """
    raw = {s: stream_tokens.get(s, 0) * upsample.get(s, 1.0) for s in streams}
    total = sum(raw.values())
    if total <= 0:
        raise ValueError(f"streams {streams} hold no tokens; the data stage produced nothing to train on")
    return {s: w / total for s, w in raw.items() if w > 0}


def _dosed(full: dict[str, float], interventions: set[str], fill: dict[str, float], scale: float) -> dict[str, float]:
    """`full` with the intervention streams' weights times `scale` and the difference given to `fill`."""
    if scale == 1.0:
        return full  # proportional dose: the mix exactly as mix_weights made it
    weights = {s: w * scale if s in interventions else w for s, w in full.items()}
    moved = sum(full.values()) - sum(weights.values())
    for s, share in fill.items():
        weights[s] = weights.get(s, 0.0) + moved * share
    return {s: w for s, w in weights.items() if w > 0}


def _curriculum_schedule(arm: ArmConfig, cfg: CurriculumConfig, stream_tokens: dict[str, int],
                         scale: float) -> Schedule:
    """Safe-only until the first start, then one phase per distinct start token, each mixing (with `upsample`)
    the arm's safe text and the interventions started so far; the default arms get exactly the two phases
    (or one, at start 0) of the papers, computed with the same calls as before."""
    budget = cfg.token_budget
    used = [s for s in cfg.intervention_streams if arm.streams is None or s in arm.streams]
    starts = {s: round(f * budget) for s, f in intervention_starts(arm, cfg).items()}
    safe = mix_weights(cfg.safe_streams, stream_tokens, {})
    phases = [] if min(starts.values()) == 0 else [Phase("safe_only", 0, safe, False)]
    for token in sorted(set(starts.values())):
        started = [s for s in used if starts.get(s, budget + 1) <= token]
        full = mix_weights([s for s in used if s not in starts or s in started], stream_tokens, cfg.upsample)
        text = {s: w for s, w in full.items() if s not in starts}
        fill = {s: w / sum(text.values()) for s, w in text.items()} if text else safe
        name = "interventions" if len(started) == len(starts) else "interventions:" + "+".join(started)
        phases.append(Phase(name, token, _dosed(full, set(starts), fill, scale), True, fill))
    ramp = round(arm.ramp * budget)
    ramps = tuple(Ramp(s, t, t + ramp) for s, t in starts.items() if t < budget) if ramp else ()
    return Schedule(tuple(phases), budget, ramps, dose_scale=scale)


def intervention_tokens(schedule: Schedule, cfg: CurriculumConfig) -> float:
    """Expected tokens of intervention streams (every stream but `safe_streams`) over the budget."""
    return sum(n for s, n in schedule.expected_tokens().items() if s not in cfg.safe_streams)


@dataclass(frozen=True)
class DoseMatch:
    """`dose: matched`: every arm's intervention weights after its switch are scaled by target / own, where own is
    the arm's expected intervention tokens under proportional dose and target the smallest own among the
    curriculum arms that read any (`excluded`: those that read none, e.g. start 1). Safe text fills the rest."""

    target: float
    own: dict[str, float]  # arm -> expected intervention tokens under proportional dose
    excluded: tuple[str, ...]

    def scale(self, arm: str, own: float) -> float:
        if own <= 0:
            return 1.0  # no interventions to scale
        if own < self.target * (1 - 1e-9):
            raise ConfigError(f"curriculum.dose=matched: arm '{arm}' expects only {own:,.0f} intervention tokens, "
                              f"fewer than the matched {self.target:,.0f}; its start leaves no room for them")
        return self.target / own


def match_dose(cfg: CurriculumConfig, stream_tokens: dict[str, int]) -> DoseMatch:
    own = {a.name: intervention_tokens(_curriculum_schedule(a, cfg, stream_tokens, 1.0), cfg)
           for a in cfg.arms if a.data == "curriculum"}
    matched = {a: n for a, n in own.items() if n > 0}
    if not matched:
        raise ConfigError("curriculum.dose=matched needs a curriculum arm whose interventions start within the "
                          f"budget; arms {sorted(own)} read none (start 1). Use dose: proportional")
    return DoseMatch(min(matched.values()), own, tuple(a for a in own if a not in matched))


def arm_schedule(arm: ArmConfig, cfg: CurriculumConfig, stream_tokens: dict[str, int]) -> Schedule:
    if arm.data == "raw":
        return Schedule((Phase("raw", 0, mix_weights(cfg.raw_streams, stream_tokens, {}), False),), cfg.token_budget)
    build = _phases_schedule if arm.phases is not None else _curriculum_schedule
    scale = 1.0
    if cfg.dose == "matched":
        own = intervention_tokens(build(arm, cfg, stream_tokens, 1.0), cfg)
        scale = match_dose(cfg, stream_tokens).scale(arm.name, own)
    return build(arm, cfg, stream_tokens, scale)


def _phases_schedule(arm: ArmConfig, cfg: CurriculumConfig, stream_tokens: dict[str, int], scale: float) -> Schedule:
    """An explicit `phases` schedule: each phase's weights normalised as given (no `upsample`); under matched dose
    the intervention weights are scaled and the phase's own safe text (or the safe mix) fills the rest."""
    budget = cfg.token_budget
    safe = mix_weights(cfg.safe_streams, stream_tokens, {})
    phases = []
    for i, ph in enumerate(arm.phases):
        total = sum(ph.weights.values())
        full = {s: w / total for s, w in ph.weights.items() if w > 0}
        inter = {s for s in full if s not in cfg.safe_streams}
        own_safe = {s: w for s, w in full.items() if s not in inter}
        fill = {s: w / sum(own_safe.values()) for s, w in own_safe.items()} if own_safe else safe
        phases.append(Phase(ph.name or f"phase{i}", round(ph.start * budget), _dosed(full, inter, fill, scale),
                            bool(inter), fill))
    return Schedule(tuple(phases), budget, blend=round(arm.ramp * budget), dose_scale=scale)


def expected_tokens_by_arm(cfg: CurriculumConfig, stream_tokens: dict[str, int]) -> dict[str, dict[str, float]]:
    """Arm -> stream -> expected tokens it reads over the budget (the data each arm asks of each shard)."""
    return {a.name: dict(sorted(arm_schedule(a, cfg, stream_tokens).expected_tokens().items())) for a in cfg.arms}


def check_data_budget(cfg: CurriculumConfig, stream_tokens: dict[str, int]) -> None:
    """Fail before training when an arm expects more than `max_repeats` passes over a stream's shard: a small
    stream silently repeated many times is a different experiment (memorised refusals, not learned ones)."""
    if cfg.max_repeats is None:
        return
    problems = []
    for arm, wants in expected_tokens_by_arm(cfg, stream_tokens).items():
        for s, n in wants.items():
            have = stream_tokens.get(s, 0)
            if n > cfg.max_repeats * have:
                problems.append(f"- curriculum.max_repeats: arm '{arm}' expects {n:,.0f} tokens of stream '{s}', "
                                f"{n / have:.2f} passes over its {have:,} tokens (max_repeats={cfg.max_repeats}); "
                                "lower curriculum.token_budget, make more data or raise max_repeats")
    if problems:
        raise ConfigError("the curriculum asks for more data than the shards hold:\n" + "\n".join(problems))


def describe_arm(arm: ArmConfig, cfg: CurriculumConfig) -> str:
    """One line of what `arm` reads and when, from the config alone (no shard sizes): for the study plan."""
    if arm.data == "raw":
        return f"raw streams {cfg.raw_streams} throughout"
    if arm.phases is not None:
        blend = f", each blended in over {arm.ramp:.0%} of the budget" if arm.ramp else ""
        return "phases " + "; ".join(f"{ph.name or f'phase{i}'} {ph.start:.0%}-{ph.end:.0%} {ph.weights}"
                                     for i, ph in enumerate(arm.phases)) + blend
    starts = intervention_starts(arm, cfg)
    if min(starts.values()) >= 1.0:
        return f"{cfg.safe_streams} throughout (interventions never start)"
    used = [s for s in cfg.intervention_streams if arm.streams is None or s in arm.streams]
    by_start: dict[float, list[str]] = {}
    for s, f in starts.items():
        by_start.setdefault(f, []).append(s)
    text = [s for s in used if s not in starts]
    parts = [f"{'+'.join(ss)} from {f:.0%}" for f, ss in sorted(by_start.items()) if f < 1.0]
    head = f"{cfg.safe_streams} until {min(starts.values()):.0%}, then " if min(starts.values()) > 0 else ""
    ramp = f", each ramped in over {arm.ramp:.0%} of the budget" if arm.ramp else ""
    dose = ", dose matched" if cfg.dose == "matched" else ""
    return f"{head}{text} + {', '.join(parts)}{ramp}{dose}"


def dose_plan(cfg: CurriculumConfig) -> str | None:
    """The plan's line on `dose: matched` (None under proportional): which arms are matched and which left out."""
    if cfg.dose != "matched":
        return None
    arms = [a for a in cfg.arms if a.data == "curriculum"]
    out = [a.name for a in arms if min(intervention_starts(a, cfg).values()) >= 1.0]
    return (f"dose matched: arms {[a.name for a in arms if a.name not in out]} read the same expected intervention "
            "tokens, the fewest any of them reads proportionally (computed from the shard sizes)"
            + (f"; left out, no intervention tokens: {out}" if out else ""))


class CurriculumSampler:
    """Batches of (batch_size, seq_len + 1) token windows, drawn by the phase in force at each step."""

    def __init__(self, schedule: Schedule, shards: dict[str, TokenShard], batch_size: int, seq_len: int, seed: int):
        self.schedule, self.shards = schedule, shards
        self.batch_size, self.seq_len, self.seed = batch_size, seq_len, seed
        self.tokens_per_step = batch_size * seq_len
        self.total_steps = schedule.budget // self.tokens_per_step
        for phase in schedule.phases:
            for s in {**phase.weights, **phase.fill}:
                if s not in shards or len(shards[s]) == 0:
                    raise ValueError(f"stream '{s}' has no shard; rerun the data stage")

    def phase(self, step: int) -> Phase:
        return self.schedule.phase_at(step * self.tokens_per_step)

    def _draw(self, step: int) -> tuple[Phase, list[str], np.random.Generator]:
        """The stream of each row, and the step's generator positioned to draw the window offsets."""
        phase = self.phase(step)
        weights = self.schedule.weights_at(step * self.tokens_per_step)  # a ramp is read at the step's first token
        names = sorted(weights)
        rng = np.random.default_rng([self.seed, step])
        picks = rng.choice(len(names), size=self.batch_size, p=[weights[n] for n in names])
        return phase, [names[i] for i in picks], rng

    def sources(self, step: int) -> list[str]:
        """The stream of each row of `step` (cheap: no token reads)."""
        return self._draw(step)[1]

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """Inputs and next-token targets (B, T) for `step`, and info for the step log."""
        phase, streams, rng = self._draw(step)
        rows = []
        for s in streams:
            shard = self.shards[s]
            rows.append(shard.window(int(rng.integers(0, len(shard))), self.seq_len + 1))
        data = torch.from_numpy(np.stack(rows))
        return data[:, :-1], data[:, 1:], {"phase": phase.name, "interventions": phase.interventions}

    def tokens_by_source(self, steps: int | None = None) -> dict:
        """Exact tokens per stream before and after the switch and in each phase, over the first `steps` steps,
        with the dose scale on the intervention weights (1 = proportional)."""
        steps = self.total_steps if steps is None else steps
        switch = self.schedule.switch_step(self.tokens_per_step)
        before: dict[str, int] = {}
        after: dict[str, int] = {}
        by_phase: dict[str, dict[str, int]] = {p.name: {} for p in self.schedule.phases}
        for step in range(steps):
            bucket = after if switch is not None and step >= switch else before
            phase = by_phase[self.phase(step).name]
            for s in self.sources(step):
                bucket[s] = bucket.get(s, 0) + self.seq_len
                phase[s] = phase.get(s, 0) + self.seq_len
        return {"switch_step": switch, "tokens_per_step": self.tokens_per_step, "steps": steps,
                "before_switch": dict(sorted(before.items())), "after_switch": dict(sorted(after.items())),
                "total": {s: before.get(s, 0) + after.get(s, 0) for s in sorted({*before, *after})},
                "dose_scale": self.schedule.dose_scale,
                "by_phase": {name: dict(sorted(t.items())) for name, t in by_phase.items()}}
