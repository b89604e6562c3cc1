"""Checks of a study config that need more than the config models: the names each registry knows, what a selected
component needs (`check`), and, before any work, the world pack and the inputs on disk.

`load_study` is how the CLI (and anything that starts work) loads a config: `load_config` (the models' own
validation) and then every registry check, all problems in one `ConfigError`, each naming its field and the fix.
"""

from __future__ import annotations

from pathlib import Path

from safepretrain.config import ConfigError, StudyConfig, load_config
from safepretrain.data.pipeline import scores_from_problems
from safepretrain.data.readers import corpus_problems
from safepretrain.data.scorers import SCORERS, rollouts
from safepretrain.eval.attacks import ATTACKS
from safepretrain.eval.decoders import DECODERS
from safepretrain.eval.judges import JUDGES
from safepretrain.run.launchers import LAUNCHERS
from safepretrain.rundir import RunDir, RunDirError
from safepretrain.utils import CorruptFileError
from safepretrain.world import WORLDS, world_sources


def registry_problems(cfg: StudyConfig) -> list[str]:
    """`- field: …` lines: unknown names in every registry-backed field, and what the selected components lack."""
    e = cfg.eval
    problems = [*DECODERS.problems(e.decoders, "eval.decoders", cfg), *JUDGES.problems(e.judges, "eval.judges", cfg),
                *ATTACKS.problems(e.attacks, "eval.attacks", cfg),
                *SCORERS.problems(cfg.data.scorer.kinds, "data.scorer.kind", cfg),
                *WORLDS.problems(cfg.world.kind, "world.kind", cfg),
                *LAUNCHERS.problems(cfg.launch.launcher, "launch.launcher", cfg)]
    if all(k in SCORERS for k in cfg.data.scorer.kinds) and len(rollouts(cfg.data.scorer.kinds)) > 1:
        problems.append(f"- data.scorer.kind: at most one rollout scorer ({', '.join(rollouts(list(SCORERS)))}) "
                        "per study")
    if cfg.world.kind in WORLDS:
        world = WORLDS[cfg.world.kind].options
        if cfg.data.routing.by == "truth" and not world.get("truth_labels"):
            problems.append(f"- data.routing.by: truth needs truth labels, which world.kind={cfg.world.kind} lacks; "
                            "set data.routing.by=scorer or world.kind=organism")
        if cfg.benign_ft.data in ("benign_answers", "benign_facts") and not world.get("benign_answers"):
            problems.append(f"- benign_ft.data: {cfg.benign_ft.data} needs a world with benign answers; set "
                            "benign_ft.data=math or world.kind=organism")
    return problems


def check_study(cfg: StudyConfig) -> StudyConfig:
    """`cfg` if every registry check passes; ConfigError listing every problem otherwise."""
    problems = registry_problems(cfg)
    if problems:
        raise ConfigError("invalid config:\n" + "\n".join(problems))
    return cfg


def load_study(path: str | Path | None = None, overrides: list[str] | None = None) -> StudyConfig:
    """`load_config` plus the registry checks: the config a study, eval or serve may start work with."""
    return check_study(load_config(path, overrides))


def validate_against_world(cfg: StudyConfig) -> None:
    """Checks that need the world pack or the file system; run before any work."""
    problems = []
    try:
        known = world_sources(cfg)
    except FileNotFoundError as err:
        raise ConfigError(f"invalid config:\n- world.pack: {err}") from None
    for s in cfg.world.sources or []:
        if s not in known:
            problems.append(f"- world.sources: unknown source '{s}'; available: {sorted(known)}")
    problems += [f"- {p}" for p in corpus_problems(cfg.world.corpus)]
    for kind in cfg.data.scorer.kinds:
        problems += [f"- {p}" for p in SCORERS[kind].options.get("input_problems", lambda c: [])(cfg)]
    if cfg.data.scores_from:  # before any world is built or run directory made, not at the data stage
        problems += [f"- {p}" for p in scores_from_problems(cfg)]
    if problems:
        raise ConfigError("invalid config:\n" + "\n".join(problems))


def check_same_study(cfg: StudyConfig, force: bool = False) -> None:
    """Refuse, unless `force`, to start in a run directory whose study.yaml is another study's (another name or
    world): starting there rewrites study.yaml and recomputes, wiping first, every step whose config changed."""
    rundir = RunDir(cfg.run_dir)
    if force or not rundir.study_yaml.is_file():
        return
    fix = "give this study another --out, or add --force to replace that run (its steps are wiped and recomputed)"
    try:
        stored = rundir.load_config()
    except (ConfigError, CorruptFileError) as err:
        raise RunDirError(f"--out {rundir.root} holds a run whose study.yaml cannot be read ({err}); {fix}") from None
    differs = [f"study name {stored.name!r} (this config: {cfg.name!r})"] if stored.name != cfg.name else []
    if stored.stage_hash("world") != cfg.stage_hash("world"):
        changed = sorted(k for k, v in stored.world.model_dump(mode="json").items()
                         if v != cfg.world.model_dump(mode="json").get(k))
        differs.append(f"another world (changed: world.{', world.'.join(changed)})")
    if differs:
        raise RunDirError(f"--out {rundir.root} holds another study: {' and '.join(differs)}; {fix}")
