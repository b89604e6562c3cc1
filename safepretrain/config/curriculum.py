"""Configs of the curriculum: arms (a start, per-stream starts and ramps, stream sets, or explicit phases),
the token budget and the dose."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from safepretrain.config.base import STREAMS, Strict


def known_streams(names, field: str) -> None:
    """Refuse stream names that are not streams, naming the field and the known ones."""
    bad = [s for s in names if s not in STREAMS]
    if bad:
        raise ValueError(f"{field} names unknown stream(s) {bad}; known streams: {sorted(STREAMS)}")


class PhaseConfig(Strict):
    """One phase of an explicit schedule: from `start` to `end` (fractions of the token budget) the arm samples
    each stream with probability proportional to `weights`."""

    start: float = Field(ge=0.0, le=1.0)
    end: float = Field(ge=0.0, le=1.0)
    weights: dict[str, float]
    """Stream -> relative sampling weight (normalised to sum 1; `upsample` does not apply), e.g.
    `{safe: 0.7, refusal: 0.3}`."""
    name: str | None = None
    """Shown in the step log and `tokens_by_source.json`; default `phase<i>`."""

    @field_validator("weights")
    @classmethod
    def _weights(cls, v: dict[str, float]) -> dict[str, float]:
        known_streams(v, "weights")
        negative = {s: w for s, w in v.items() if not w >= 0}
        if negative:
            raise ValueError(f"weights {negative} must be >= 0 (relative sampling weights)")
        if sum(v.values()) <= 0:
            raise ValueError(f"weights {v} are all zero; give at least one stream a positive weight, e.g. {{safe: 1}}")
        return v


def first_step_at(token: int, budget: int, tokens_per_step: int) -> int | None:
    """The first step whose batch reads token `token` of the budget, ceil(token / tokens_per_step): a boundary at
    token b takes effect exactly at b, to the batch. None when that step is not within the budget's steps. The one
    formula of every switch step (an arm's, a stream's, a schedule's)."""
    step = -(-token // tokens_per_step)
    return step if step < budget // tokens_per_step else None


def first_non_safe(phases: list[PhaseConfig], safe_streams: list[str]) -> float:
    """The switch of an explicit schedule: the start of the first phase that reads a stream outside
    `safe_streams` (1.0 when none does)."""
    return next((p.start for p in phases if any(w > 0 and s not in safe_streams for s, w in p.weights.items())), 1.0)


class ArmConfig(Strict):
    """One pretraining arm."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    data: Literal["raw", "curriculum"] = "curriculum"
    """`raw`: untouched data (safe + unsafe streams) throughout. `curriculum`: safe-only, then the mix."""
    start: float | None = None
    """Fraction of the token budget after which the interventions start (0 = from the first step,
    1 = never): the arm's switch. Required for `curriculum` arms (or implied by `starts`), not allowed for `raw`."""
    starts: dict[str, float] = {}
    """Per-intervention starts (fractions of the budget), e.g. `{rephrased: 0.2, refusal: 0.6}`; a stream absent
    here starts at `start`. `start` is the switch, so no value may be below it; left out, `start` = the earliest."""
    ramp: float = Field(0.0, ge=0.0, le=1.0)
    """Fraction of the budget over which each intervention stream's weight rises linearly from 0 at its start to
    its full mix weight (safe text fills the rest); 0 = a step change. Every start + ramp must be <= 1."""
    streams: list[str] | None = None
    """Streams this arm reads after its start, a subset of `curriculum.intervention_streams` (e.g. `[safe,
    rephrased]` for an ablation ladder); null = all of them."""
    phases: list[PhaseConfig] | None = None
    """An explicit schedule instead of start/starts/streams: a list of `{start, end, weights, name}` covering the
    budget from 0 to 1 without gaps or overlaps. `start` (the switch) becomes the first phase that reads a stream
    outside `safe_streams`; `ramp` then blends each phase's weights linearly into the next over that share of the
    budget. Such arms train from scratch (no shared trunk)."""

    @field_validator("start")
    @classmethod
    def _fraction(cls, v: float | None) -> float | None:
        if v is not None and not 0.0 <= v <= 1.0:
            raise ValueError(f"start={v} is outside [0, 1]; it is a fraction of the token budget, e.g. 0.2 for 20%")
        return v

    @field_validator("starts")
    @classmethod
    def _starts(cls, v: dict[str, float]) -> dict[str, float]:
        known_streams(v, "starts")
        for s, f in v.items():
            if not 0.0 <= f <= 1.0:
                raise ValueError(f"starts[{s}]={f} is outside [0, 1]; it is a fraction of the token budget")
        return v

    @field_validator("streams")
    @classmethod
    def _streams(cls, v: list[str] | None) -> list[str] | None:
        known_streams(v or [], "streams")
        if v is not None and not v:
            raise ValueError("streams is empty; list the streams to read after the start, e.g. [safe, rephrased]")
        return v

    @field_validator("phases")
    @classmethod
    def _tiles_the_budget(cls, v: list[PhaseConfig] | None) -> list[PhaseConfig] | None:
        if v is None:
            return v
        if not v:
            raise ValueError("phases is empty; give at least one {start: 0, end: 1, weights: {safe: 1}}")
        if v[0].start != 0.0:
            raise ValueError(f"phases[0].start={v[0].start}: the first phase must start at 0")
        for i, ph in enumerate(v):
            if ph.end <= ph.start:
                raise ValueError(f"phases[{i}]: end={ph.end} must be after start={ph.start}")
            if i and ph.start != v[i - 1].end:
                kind = "overlaps" if ph.start < v[i - 1].end else "leaves a gap after"
                raise ValueError(f"phases[{i}].start={ph.start} {kind} phases[{i - 1}] (end={v[i - 1].end}); "
                                 f"set phases[{i}].start: {v[i - 1].end}")
        if v[-1].end != 1.0:
            raise ValueError(f"phases[{len(v) - 1}].end={v[-1].end}: the last phase must end at 1 (the whole budget)")
        names = [ph.name or f"phase{i}" for i, ph in enumerate(v)]
        if len(set(names)) != len(names):
            raise ValueError(f"phase names must be unique; got {names}")
        return v

    @model_validator(mode="before")
    @classmethod
    def _start_from_starts(cls, data: Any) -> Any:
        # `start` is the switch that the trunk, the plan and tag-aware instruction tuning read: without one, it is
        # the earliest per-stream start (so the config always states where the interventions begin)
        if isinstance(data, dict) and data.get("start") is None and data.get("starts") \
                and data.get("data", "curriculum") == "curriculum":
            try:
                data = {**data, "start": min(float(f) for f in data["starts"].values())}
            except (TypeError, ValueError):
                pass  # the field validators name the bad value
        return data

    @model_validator(mode="after")
    def _start(self) -> ArmConfig:
        if self.data == "raw":
            extra = [k for k in ("start", "starts", "streams") if getattr(self, k)] + (["ramp"] if self.ramp else [])
            if self.start is not None or extra:
                raise ValueError(f"arm '{self.name}' has data=raw, which never switches; remove {extra or ['start']}")
        if self.phases is not None:
            extra = [k for k in ("starts", "streams") if getattr(self, k)]
            if self.data == "raw" or extra:
                raise ValueError(f"arm '{self.name}': phases is the whole schedule; remove "
                                 f"{extra or ['data: raw']} (or drop phases)")
            short = min((p.end - p.start for p in self.phases[1:]), default=1.0)
            if self.ramp > short + 1e-12:
                raise ValueError(f"arm '{self.name}': ramp={self.ramp} is longer than its shortest blended phase "
                                 f"({short:g} of the budget); shorten the ramp")
            if self.start is None:  # refined against curriculum.safe_streams by CurriculumConfig
                self.start = first_non_safe(self.phases, ["safe"])
            return self
        if self.data == "curriculum" and self.start is None:
            raise ValueError(f"arm '{self.name}' needs a start fraction in [0, 1], e.g. start: 0.2")
        if self.data == "curriculum":
            early = {s: f for s, f in self.starts.items() if f < self.start}
            if early:
                raise ValueError(f"arm '{self.name}': starts {early} begin before start={self.start}; start is the "
                                 f"switch (the first intervention), so set start: {min(early.values())}")
            for where, f in [("start", self.start)] + [(f"starts[{s}]", f) for s, f in self.starts.items()]:
                if self.ramp and f + self.ramp > 1.0 + 1e-12:
                    raise ValueError(f"arm '{self.name}': {where}={f} + ramp={self.ramp} passes the end of the "
                                     "budget (> 1); shorten the ramp or start earlier (drop a stream with `streams`)")
        return self


def default_arms() -> list[ArmConfig]:
    return [
        ArmConfig(name="raw", data="raw"),
        ArmConfig(name="start_0", start=0.0),
        ArmConfig(name="start_20", start=0.2),
        ArmConfig(name="start_60", start=0.6),
        ArmConfig(name="safe_only", start=1.0),
    ]


class CurriculumConfig(Strict):
    """Token budget, arms and the mixtures before and after the switch."""

    token_budget: int = Field(1_000_000, gt=0)
    """Pretraining tokens per arm (units: tokens). Steps = budget // (batch_size * seq_len)."""
    arms: list[ArmConfig] = Field(default_factory=default_arms)
    """Arms to train, each `{name, data: raw|curriculum, start, starts, ramp, streams}` or `{name, phases, ramp}`:
    `start` = the switch (fraction of the budget); `starts` = per-intervention starts, e.g. `{refusal: 0.6}`
    (others start at `start`); `ramp` = fraction of the budget over which each intervention's weight rises linearly
    from 0; `streams` = the subset of intervention_streams read after the start (default all); `phases` = an explicit
    list of `{start, end, weights}` instead. Default raw, start_0, start_20, start_60, safe_only."""
    safe_streams: list[str] = ["safe"]
    """Streams read before the switch (the papers: score-0 data only)."""
    intervention_streams: list[str] = ["safe", "rephrased", "refusal", "moral_ed", "tagged"]
    """Streams read after the switch."""
    raw_streams: list[str] = ["safe", "unsafe"]
    """Streams of the raw arm."""
    upsample: dict[str, float] = {"refusal": 6.0}
    """Weight multipliers on a stream's natural token share (the released checkpoint hints 6x refusal)."""
    share_safe_prefix: bool = True
    """Arms of one seed whose first steps are all safe-only (start_20, start_60, safe_only) branch from one
    trunk run at their switch steps instead of each training the shared prefix again: cheaper, and their
    comparison is paired on identical weights up to the switch (bit-identical to separate runs in fp32)."""
    dose: Literal["proportional", "matched"] = "proportional"
    """`proportional`: the mix's weights as they are, so a later start reads fewer intervention tokens (the papers'
    confound). `matched`: each curriculum arm's intervention weights after its switch are scaled so its expected
    intervention tokens equal the smallest among the arms (safe text fills the rest); arms whose interventions
    never start (start 1) are left out of the matching."""
    max_repeats: float | None = Field(None, gt=0)
    """Most epochs any arm may expect to read of a stream (expected tokens / the stream's shard tokens), checked
    against the shard sizes before pretraining; null = unlimited (small streams are simply repeated)."""

    @field_validator("safe_streams", "intervention_streams", "raw_streams")
    @classmethod
    def _known(cls, v: list[str], info: ValidationInfo) -> list[str]:
        known_streams(v, info.field_name)
        if not v:
            raise ValueError(f"needs at least one stream, e.g. ['safe']; known streams: {sorted(STREAMS)}")
        return v

    @field_validator("upsample")
    @classmethod
    def _upsample(cls, v: dict[str, float]) -> dict[str, float]:
        known_streams(v, "upsample")
        for s, w in v.items():
            if w <= 0:
                raise ValueError(f"upsample[{s}]={w} must be > 0 (1 = natural share)")
        return v

    @field_validator("arms")
    @classmethod
    def _unique(cls, v: list[ArmConfig]) -> list[ArmConfig]:
        names = [a.name for a in v]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"arm names must be unique; repeated: {dup}")
        if not v:
            raise ValueError("needs at least one arm, e.g. [{name: start_0, start: 0.0}]")
        return v

    @model_validator(mode="after")
    def _arm_streams(self) -> CurriculumConfig:
        # per-arm stream sets and starts only make sense against the mix, which the arm itself does not know
        for i, arm in enumerate(self.arms):
            if arm.data != "curriculum":
                continue
            where = f"arms[{i}] ('{arm.name}')"
            if arm.phases is not None:
                switch = first_non_safe(arm.phases, self.safe_streams)
                if arm.start not in (switch, first_non_safe(arm.phases, ["safe"])):
                    raise ValueError(f"{where}.start={arm.start}, but its phases first read an intervention at "
                                     f"{switch}; with phases, start is derived from them: remove it")
                arm.start = switch
                continue
            extra = [s for s in arm.streams or [] if s not in self.intervention_streams]
            if extra:
                raise ValueError(f"{where}.streams has {extra}, which are not in intervention_streams="
                                 f"{self.intervention_streams}")
            used = [s for s in self.intervention_streams if arm.streams is None or s in arm.streams]
            interventions = [s for s in used if s not in self.safe_streams]
            if not interventions:
                raise ValueError(f"{where}.streams={arm.streams} has no intervention stream (all are safe_streams);"
                                 " for a safe-only arm use start: 1.0")
            stray = [s for s in arm.starts if s not in interventions]
            if stray:
                raise ValueError(f"{where}.starts names {stray}, which this arm does not read as interventions; "
                                 f"its intervention streams are {interventions}")
            earliest = min(arm.starts.get(s, arm.start) for s in interventions)
            if earliest != arm.start:
                raise ValueError(f"{where}.start={arm.start} but its earliest intervention starts at {earliest}; "
                                 f"start is the switch, so set start: {earliest}")
        if self.dose == "matched" and all(a.data == "raw" or a.start >= 1.0 for a in self.arms):
            raise ValueError("dose=matched needs a curriculum arm whose interventions start before the end of the "
                             "budget (start < 1); there is no dose to match, use dose: proportional")
        return self


def intervention_starts(arm: ArmConfig, cfg: CurriculumConfig) -> dict[str, float]:
    """Start fraction of each intervention stream `arm` reads: the streams it reads after its switch that are not
    safe text (`safe_streams`), each at `starts[stream]` or else at the arm's `start`; with explicit `phases`, the
    start of the first phase that gives it weight."""
    if arm.phases is not None:
        out: dict[str, float] = {}
        for ph in arm.phases:
            for s, w in ph.weights.items():
                if w > 0 and s not in cfg.safe_streams:
                    out.setdefault(s, ph.start)
        return out or {"safe": 1.0}  # reads safe text only: never switches
    used = [s for s in cfg.intervention_streams if arm.streams is None or s in arm.streams]
    return {s: arm.starts.get(s, arm.start) for s in used if s not in cfg.safe_streams}
