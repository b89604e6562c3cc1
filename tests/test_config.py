"""Config loading and validation: invalid configs fail before any work, naming the field and the fix.

    python -m pytest tests/test_config.py -q
"""

import re
from pathlib import Path

import pytest

from safepretrain.config import ConfigError, load_config
from safepretrain.run.checks import load_study, validate_against_world

CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_shipped_config_validates(path):
    cfg = load_config(path)
    assert cfg.curriculum.token_budget >= cfg.pretrain.batch_size * cfg.pretrain.seq_len


def test_overrides_reach_nested_fields_and_list_items():
    cfg = load_config(None, ["curriculum.token_budget=2e5", "curriculum.arms.2.start=0.3", "model.preset=small"])
    assert cfg.curriculum.token_budget == 200_000
    assert cfg.curriculum.arms[2].start == 0.3
    assert cfg.model.d_model == 256  # preset filled the shape


@pytest.mark.parametrize(
    "override, field, hint",
    [
        (["model.dmodel=64"], "model.dmodel", "Did you mean 'd_model'"),
        (["curriculum.arms.1.start=1.5"], "curriculum.arms.1.start", "outside [0, 1]"),
        (["curriculum.arms.1.start=-0.1"], "curriculum.arms.1.start", "outside [0, 1]"),
        (["curriculum.token_budget=0"], "curriculum.token_budget", "greater than 0"),
        (["curriculum.token_budget=-5"], "curriculum.token_budget", "greater than 0"),
        (["curriculum.upsample={refusl: 6}"], "curriculum.upsample", "known streams"),
        (["curriculum.intervention_streams=[safe, nope]"], "curriculum.intervention_streams", "known streams"),
        (["data.routing.rephrase_scores=[1, 4]"], "data.routing", "overlap"),
        (["model.preset=huge"], "model", "choose one of"),
        (["data.routing.by=truth"], "data.routing.by", "world.kind=organism"),
        (["benign_ft.data=benign_answers"], "benign_ft.data", "world.kind=organism"),
        (["benign_ft.data=benign_facts"], "benign_ft.data", "world.kind=organism"),
        (["world.kind=organism", "world.organism.dual_use_components=5"], "world.organism.dual_use_components",
         "less than or equal to 4"),
        (["world.kind=organism", "world.organism.heldout_fraction=1.0"], "world.organism.heldout_fraction",
         "less than 1"),
    ],
)
def test_invalid_configs_name_the_field_and_the_fix(override, field, hint):
    with pytest.raises(ConfigError) as err:
        load_study(None, override)
    assert field in str(err.value) and hint in str(err.value)


def test_budget_smaller_than_one_step_is_rejected():
    with pytest.raises(ConfigError, match="less than one pretraining step"):
        load_config(None, ["curriculum.token_budget=100", "pretrain.batch_size=8", "pretrain.seq_len=64"])


def test_missing_world_source_and_corpus_fail_before_work(tmp_path):
    cfg = load_config(None, ["world.sources=[brown, no_such_source]"])
    with pytest.raises(ConfigError, match="world.sources: unknown source 'no_such_source'"):
        validate_against_world(cfg)
    cfg = load_config(None, [f"world.corpus=[{tmp_path / 'missing.jsonl'}]"])
    with pytest.raises(ConfigError, match="world.corpus.0"):
        validate_against_world(cfg)


def test_missing_config_file_and_bad_override_syntax():
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("configs/nope.yaml")
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["curriculum.token_budget"])


@pytest.mark.parametrize("override, field", [
    ("pretrain.device=banana", "pretrain.device"),
    ("pretrain.lr=inf", "pretrain.lr"),
    ("eval.decoders=[]", "eval.decoders"),
    ("eval.max_new_tokens=256", "eval.max_new_tokens"),
    ("data.interventions.tag=<|endoftext|>", "data.interventions.tag"),
    ("eval.generation_seeds=[7]", "eval.generation_seeds"),
])
def test_invalid_settings_fail_before_any_work(override, field):
    with pytest.raises(ConfigError, match=re.escape(field)):
        load_config(None, [override])


def test_yaml_syntax_error_names_file_line_and_column(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ncurriculum:\n  token_budget: 100\n   arms: [\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:\d+:\d+: YAML syntax error"):
        load_config(bad)
