"""`StudyConfig` gathers every component config; YAML + dotlist loading with field-naming errors."""

from __future__ import annotations

import difflib
import hashlib
import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from safepretrain.config.base import ConfigError, Strict
from safepretrain.config.curriculum import ArmConfig, CurriculumConfig, first_step_at, intervention_starts
from safepretrain.config.data import DataConfig, TokenizerConfig, WorldConfig, anchor_scores_from
from safepretrain.config.evaluation import EvalConfig
from safepretrain.config.launch import LaunchConfig
from safepretrain.config.training import (
    BenignFTConfig,
    HarmfulFTConfig,
    IFTConfig,
    ModelConfig,
    PretrainConfig,
    TrainConfig,
)


class StudyConfig(Strict):
    """A whole study: data stage, arms x seeds x stages, evaluation and report."""

    name: str = Field("study", pattern=r"^[A-Za-z0-9_.-]+$")
    """Study name (letters, digits, _ . -); names the run directory."""
    out_dir: str | None = None
    """Run directory; null = runs/<name>."""
    seeds: list[int] = [0, 1, 2]
    """Training seeds; each arm is trained once per seed. Arm differences are paired by seed and prompt."""
    world: WorldConfig = WorldConfig()
    data: DataConfig = DataConfig()
    tokenizer: TokenizerConfig = TokenizerConfig()
    curriculum: CurriculumConfig = CurriculumConfig()
    model: ModelConfig = ModelConfig()
    pretrain: PretrainConfig = PretrainConfig()
    ift: IFTConfig = IFTConfig()
    benign_ft: BenignFTConfig = BenignFTConfig()
    harmful_ft: HarmfulFTConfig = HarmfulFTConfig()
    eval: EvalConfig = EvalConfig()
    launch: LaunchConfig = LaunchConfig()
    rank_timeout_minutes: float = Field(720.0, gt=0)
    """Under torchrun: how long a rank waits for the others at a collective. Ranks 1..N wait while rank 0 alone
    runs the data stage and the evaluations, so this is hours, not NCCL's default 10 minutes."""

    @field_validator("name")
    @classmethod
    def _not_a_path_step(cls, v: str) -> str:
        if set(v) == {"."}:
            raise ValueError(f"name={v!r} would make the run directory a parent folder; use letters or digits, "
                             "e.g. name=my_study")
        return v

    @model_validator(mode="after")
    def _cross(self) -> StudyConfig:
        tokens_per_step = self.tokens_per_step
        if self.curriculum.token_budget < tokens_per_step:
            raise ValueError(
                f"curriculum.token_budget={self.curriculum.token_budget} is less than one pretraining step "
                f"(pretrain.batch_size*pretrain.seq_len={tokens_per_step} tokens); raise the budget"
            )
        for stage, section in self.train_sections.items():
            if section.seq_len > self.model.max_seq_len:
                raise ValueError(f"{stage}.seq_len={section.seq_len} exceeds model.max_seq_len="
                                 f"{self.model.max_seq_len}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds={self.seeds} must be a non-empty list of distinct integers, e.g. [0, 1]")
        stray = sorted(set(self.eval.generation_seeds or []) - set(self.seeds))
        if stray:
            raise ValueError(f"eval.generation_seeds has {stray}, which are not in seeds={self.seeds}")
        if self.eval.max_new_tokens >= self.model.max_seq_len:
            raise ValueError(f"eval.max_new_tokens={self.eval.max_new_tokens} leaves no room for a prompt in "
                             f"model.max_seq_len={self.model.max_seq_len}; lower it")
        for stage in ("benign_ft", "harmful_ft"):
            steps = getattr(self, stage).steps
            bad = [s for s in getattr(self.eval, f"{stage}_curve") if not 0 <= s < steps]
            if bad:
                raise ValueError(f"eval.{stage}_curve has steps {bad} outside [0, {stage}.steps={steps}); the last "
                                 "step is always measured")
        return self

    @property
    def train_sections(self) -> dict[str, TrainConfig]:
        """The trained stages' sections (pretrain, ift, benign_ft), by field name: every `TrainConfig` field."""
        return {name: value for name, value in self if isinstance(value, TrainConfig)}

    @property
    def runs_harmful_ft(self) -> bool:
        """Whether the study runs the harmful-finetuning stage (`harmful_ft.enabled`, null = on the organism)."""
        enabled = self.harmful_ft.enabled
        return self.world.kind == "organism" if enabled is None else enabled

    @property
    def pretrain_steps(self) -> int:
        return self.curriculum.token_budget // self.tokens_per_step

    @property
    def tokens_per_step(self) -> int:
        return self.pretrain.batch_size * self.pretrain.seq_len

    def switch_step(self, arm: ArmConfig) -> int | None:
        """First pretraining step of `arm` with the intervention mix; None if it never starts (or raw data):
        exactly at start · budget tokens, to the batch (`first_step_at`)."""
        if arm.data == "raw":
            return None
        return first_step_at(round(arm.start * self.curriculum.token_budget), self.curriculum.token_budget,
                             self.tokens_per_step)

    def saw_tags(self, arm: ArmConfig) -> bool:
        """Whether `arm` read tagged text in pretraining: it reads the tagged stream (its `streams`) and that
        stream's start (`starts`, else `start`) falls inside the budget. Only such arms get tag-annotated
        instruction data (papers §5.1)."""
        if arm.data == "raw":
            return False
        start = intervention_starts(arm, self.curriculum).get("tagged")
        if start is None:  # the arm never reads the tagged stream (e.g. a rung of the ablation ladder)
            return False
        budget = self.curriculum.token_budget
        return first_step_at(round(start * budget), budget, self.tokens_per_step) is not None

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir or f"runs/{self.name}")

    def stage_hash(self, *sections: str, extra: Any = None) -> str:
        """Hash of the given config sections (+ `extra`): a cached step reruns only when its inputs change.

        `curriculum.arms` is left out: each arm's steps hash their own arm, so adding or removing an arm
        never invalidates the others."""
        tree = self.model_dump(mode="json")
        tree["curriculum"].pop("arms")
        blob = json.dumps({"sections": {s: tree[s] for s in sections}, "extra": extra}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- loading
def _parse_value(text: str) -> Any:
    """YAML scalars, plus numbers YAML 1.1 reads as strings (`2e6`)."""
    for number in (int, float):
        try:
            return number(text)
        except ValueError:
            pass
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _set_path(tree: dict, dotted: str, value: Any) -> None:
    """Set `a.b.2.c` in a nested dict; a list not yet in `tree` is copied from the defaults first."""
    keys = dotted.split(".")
    node: Any = tree
    default: Any = _defaults_tree()
    for i, key in enumerate(keys):
        default = default.get(key) if isinstance(default, dict) else (
            default[int(key)] if isinstance(default, list) and key.isdigit() and int(key) < len(default) else None)
        if isinstance(node, dict) and key not in node and isinstance(default, list) and i < len(keys) - 1:
            node[key] = json.loads(json.dumps(default))
        last = i == len(keys) - 1
        if isinstance(node, list):
            if not key.isdigit() or int(key) >= len(node):
                raise ConfigError(f"{'.'.join(keys[:i + 1])}: no list item {key!r} (the list has {len(node)} items)")
            if last:
                node[int(key)] = value
            else:
                node = node[int(key)]
            continue
        if last:
            node[key] = value
        else:
            node = node.setdefault(key, {})


def _defaults_tree() -> dict:
    return StudyConfig().model_dump(mode="json")


def _suggest(loc: tuple, tree: dict) -> str:
    """'Did you mean' for an unknown key, using the keys valid at that level."""
    node: Any = tree
    for part in loc[:-1]:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
        else:
            return ""
    if not isinstance(node, dict):
        return ""
    close = difflib.get_close_matches(str(loc[-1]), list(node), n=1)
    valid = ", ".join(sorted(node))
    return (f" Did you mean '{close[0]}'?" if close else "") + f" Valid keys here: {valid}."


def _format_errors(err: ValidationError) -> str:
    tree = _defaults_tree()
    lines = []
    for e in err.errors():
        loc = tuple(x for x in e["loc"] if not (isinstance(x, str) and x.startswith("function-")))
        field = ".".join(str(x) for x in loc) or "(top level)"
        if e["type"] == "extra_forbidden":
            lines.append(f"- {field}: unknown key; remove it or fix the spelling.{_suggest(loc, tree)}")
        else:
            msg = e["msg"].removeprefix("Value error, ")
            given = e.get("input")
            shown = "" if isinstance(given, (dict, list)) else f" (given: {given!r})"
            lines.append(f"- {field}: {msg}{shown}")
    return "invalid config:\n" + "\n".join(lines)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> StudyConfig:
    """Read YAML (or defaults when `path` is None), apply `key=value` overrides, validate."""
    tree: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist; try configs/default.yaml")
        try:
            loaded = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f"{p}:{mark.line + 1}:{mark.column + 1}" if mark else str(p)
            raise ConfigError(f"{where}: YAML syntax error: {getattr(err, 'problem', None) or err}; fix the file "
                              "(indentation and ':' after each key are the usual culprits)") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p}: the top level must be a mapping of sections (world:, data:, ...)")
        tree = loaded
        anchor_scores_from(tree, p.parent)  # a path in a config file is read from the file's folder
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value, e.g. curriculum.token_budget=200000")
        key, _, raw = item.partition("=")
        _set_path(tree, key.strip(), _parse_value(raw))
    anchor_scores_from(tree, Path.cwd())  # ... and one typed on the command line from the current folder
    try:
        return StudyConfig.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(_format_errors(err)) from None


def dump_config(cfg: StudyConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def reference_markdown() -> str:
    """The config reference of docs/config.md: every field with its default and documentation (kept current by a
    test). Every config section is a `Strict` model."""
    lines = ["| key | default | meaning |", "|---|---|---|"]

    def walk(model: type[Strict], prefix: str) -> None:
        for name, field in model.model_fields.items():
            ann = field.annotation
            if isinstance(ann, type) and issubclass(ann, Strict):
                walk(ann, f"{prefix}{name}.")
                continue
            default = field.default_factory() if field.default_factory else field.default
            if isinstance(default, list) and default and isinstance(default[0], Strict):
                default = "5 arms (see below)"
            shown = json.dumps(default, default=str) if not isinstance(default, str) else default
            doc = (field.description or "").replace("\n", " ").replace("|", "\\|")
            lines.append(f"| `{prefix}{name}` | `{shown}` | {doc} |")

    walk(StudyConfig, "")
    return "\n".join(lines)


CONFIG_DOC_MARKERS = ("<!-- config-reference:start -->", "<!-- config-reference:end -->")


def update_config_doc(path: Path) -> bool:
    """Rewrite the config reference between its markers in `path` (docs/config.md); True when it changed."""
    text = path.read_text()
    start, end = CONFIG_DOC_MARKERS
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    new = f"{head}{start}\n{reference_markdown()}\n{end}{tail}"
    if new != text:
        path.write_text(new)
    return new != text
