"""Curriculum: which streams a pretraining step reads, as pure functions of tokens seen.

An arm's schedule is a list of phases. The papers' arms are two phases: safe-only data until
`start * budget` tokens, then the intervention mix; `raw` is one phase of untouched data. A step
belongs to the phase in force for the tokens seen *before* it, so with `tokens_per_step` T the switch
happens at step ceil(start * budget / T): exactly at `start * budget`, to the batch.

`CurriculumSampler.batch(step)` is a pure function of (seed, step): resuming after a kill replays the
same batches, and tokens-per-source accounting is exact (`tokens_by_source`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from safepretrain.config import ArmConfig, CurriculumConfig
from safepretrain.data.shards import TokenShard


@dataclass(frozen=True)
class Phase:
    name: str  # "safe_only" | "interventions" | "raw"
    start_token: int  # first token of the budget in this phase
    weights: dict[str, float]  # stream -> sampling probability (sums to 1)
    interventions: bool


@dataclass(frozen=True)
class Schedule:
    phases: tuple[Phase, ...]  # sorted by start_token; the first starts at 0
    budget: int

    def phase_at(self, tokens_seen: int) -> Phase:
        """The phase in force after `tokens_seen` tokens."""
        current = self.phases[0]
        for phase in self.phases[1:]:
            if tokens_seen >= phase.start_token:
                current = phase
        return current

    def switch_step(self, tokens_per_step: int) -> int | None:
        """First step of the intervention phase, or None if it never starts within the budget."""
        steps = self.budget // tokens_per_step
        for phase in self.phases:
            if phase.interventions:
                step = math.ceil(phase.start_token / tokens_per_step)
                return step if step < steps else None
        return None


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


def arm_schedule(arm: ArmConfig, cfg: CurriculumConfig, stream_tokens: dict[str, int]) -> Schedule:
    if arm.data == "raw":
        return Schedule((Phase("raw", 0, mix_weights(cfg.raw_streams, stream_tokens, {}), False),), cfg.token_budget)
    start = round(arm.start * cfg.token_budget)
    safe = Phase("safe_only", 0, mix_weights(cfg.safe_streams, stream_tokens, {}), False)
    mix = Phase("interventions", start, mix_weights(cfg.intervention_streams, stream_tokens, cfg.upsample), True)
    phases = (mix,) if start == 0 else (safe, mix)
    return Schedule(phases, cfg.token_budget)


class CurriculumSampler:
    """Batches of (batch_size, seq_len + 1) token windows, drawn by the phase in force at each step."""

    def __init__(self, schedule: Schedule, shards: dict[str, TokenShard], batch_size: int, seq_len: int, seed: int):
        self.schedule, self.shards = schedule, shards
        self.batch_size, self.seq_len, self.seed = batch_size, seq_len, seed
        self.tokens_per_step = batch_size * seq_len
        self.total_steps = schedule.budget // self.tokens_per_step
        for phase in schedule.phases:
            for s in phase.weights:
                if s not in shards or len(shards[s]) == 0:
                    raise ValueError(f"stream '{s}' has no shard; rerun the data stage")

    def phase(self, step: int) -> Phase:
        return self.schedule.phase_at(step * self.tokens_per_step)

    def _draw(self, step: int) -> tuple[Phase, list[str], np.random.Generator]:
        """The stream of each row, and the step's generator positioned to draw the window offsets."""
        phase = self.phase(step)
        names = sorted(phase.weights)
        rng = np.random.default_rng([self.seed, step])
        picks = rng.choice(len(names), size=self.batch_size, p=[phase.weights[n] for n in names])
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
        """Exact tokens per stream before and after the switch, over the first `steps` steps."""
        steps = self.total_steps if steps is None else steps
        switch = self.schedule.switch_step(self.tokens_per_step)
        before: dict[str, int] = {}
        after: dict[str, int] = {}
        for step in range(steps):
            bucket = after if switch is not None and step >= switch else before
            for s in self.sources(step):
                bucket[s] = bucket.get(s, 0) + self.seq_len
        return {"switch_step": switch, "tokens_per_step": self.tokens_per_step, "steps": steps,
                "before_switch": dict(sorted(before.items())), "after_switch": dict(sorted(after.items())),
                "total": {s: before.get(s, 0) + after.get(s, 0) for s in sorted({*before, *after})}}
