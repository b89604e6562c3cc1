"""The command line: dry runs, config errors before any work, world info.

    python -m pytest tests/test_cli.py -q
"""

from pathlib import Path

from safepretrain.cli import main

ROOT = Path(__file__).parents[1]


def test_dry_run_prints_resolved_config_and_plan(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["study", str(ROOT / "configs" / "smoke.yaml"), "--out", str(out), "--dry-run",
                 "curriculum.arms.2.start=0.5"]) == 0
    text = capsys.readouterr().out
    assert "token_budget: 20480" in text and "# planned steps" in text
    assert "arm start_20: pretrain 40 steps" in text and "switch at step 20" in text
    assert not out.exists()  # a dry run does no work


def test_invalid_config_exits_with_the_field_and_does_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["study", "--out", str(out), "curriculum.arms.1.start=2", "world.sources=[nope]"]) == 2
    err = capsys.readouterr().err
    assert "curriculum.arms.1.start" in err and "outside [0, 1]" in err
    assert not out.exists()
    assert main(["study", "--out", str(out), "world.sources=[nope]"]) == 2
    assert "world.sources: unknown source 'nope'" in capsys.readouterr().err
    assert not out.exists()


def test_world_info_lists_sources(capsys):
    assert main(["world", "info"]) == 0
    text = capsys.readouterr().out
    assert "documents/brown" in text and "harmful_eval_prompts" in text


def test_report_refuses_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "not a study run directory" in capsys.readouterr().err


def test_study_under_torchrun_refuses_a_training_stage_that_is_not_data_parallel(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")  # each rank would train its own copy: refused before any work
    out = tmp_path / "run"
    assert main(["study", str(ROOT / "configs" / "smoke.yaml"), "--out", str(out), "pretrain.distributed=ddp"]) == 2
    err = capsys.readouterr().err
    assert "ift.distributed" in err and "set ift.distributed=ddp" in err and not out.exists()
