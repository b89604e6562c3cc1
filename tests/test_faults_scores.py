"""Reused scores and the shared data stage (issue 21, item 2 and related): `data.scores_from` is verified like a
run's own scoring step, before any work; the data stage is built once when parts start together; another study at
the same --out needs --force.

    python -m pytest tests/test_faults_scores.py -q
"""

import threading
import time
from pathlib import Path

import pytest

import safepretrain.run.study as study_module
from safepretrain.cli import main
from safepretrain.config import ConfigError, dump_config, load_config
from safepretrain.data.pipeline import run_scoring_stage, scoring_hash
from safepretrain.run.checks import validate_against_world
from safepretrain.run.parts import prepare_launch
from safepretrain.run.status import study_status
from safepretrain.run.study import prepare_data
from safepretrain.rundir import RunDir, RunLock
from safepretrain.utils import StepMarker, files_in, read_jsonl, write_jsonl

ROOT = Path(__file__).parents[1]
SMOKE = str(ROOT / "configs" / "smoke.yaml")
SCORED = "scored/00000.jsonl.gz"


@pytest.fixture(autouse=True)
def no_step_started(monkeypatch):
    """A study that fails names the step it last started (a class attribute): none of another test's runs."""
    monkeypatch.setattr(StepMarker, "last_started", None)


def finished_scoring(folder: Path, config_hash: str) -> Path:
    """A scoring folder as a finished scoring step leaves it: scored documents, done.json with their checksums."""
    marker = StepMarker(folder, config_hash)
    marker.start()
    write_jsonl(folder / SCORED, ({"id": f"d{i}", "text": f"document {i}", "source": "news", "harm_score": i % 6,
                                   "chunk_scores": [i % 6]} for i in range(60)))
    marker.finish(outputs=files_in(folder / "scored"), metrics={"macro_f1": 0.9})
    return folder


def test_tampered_scores_from_is_refused_naming_the_file(tmp_path):
    source = tmp_path / "a" / "scoring"
    cfg = load_config(SMOKE, [f"out_dir={tmp_path / 'b'}", f"data.scores_from={source}"])
    finished_scoring(source, scoring_hash(cfg))
    validate_against_world(cfg)  # intact: reusable
    assert run_scoring_stage(cfg, None, tmp_path / "b" / "scoring") == (source, {"macro_f1": 0.9})
    # relabel the unsafe documents as safe: a run's own step would see the checksum mismatch
    rows = list(read_jsonl(source / SCORED))
    write_jsonl(source / SCORED, ({**r, "harm_score": 0 if r["harm_score"] >= 4 else r["harm_score"]} for r in rows))
    with pytest.raises(ConfigError, match=f"{SCORED}: checksum mismatch") as at_load:
        validate_against_world(cfg)
    assert "data.scores_from" in str(at_load.value) and "score again" in str(at_load.value)
    with pytest.raises(ConfigError, match=f"{SCORED}: checksum mismatch"):  # the library path checks it too
        run_scoring_stage(cfg, None, tmp_path / "b" / "scoring")


def test_status_of_a_run_that_reuses_scores_shows_their_scoring_step(tmp_path):
    source = tmp_path / "a" / "scoring"
    cfg = load_config(SMOKE, [f"out_dir={tmp_path / 'b'}", f"data.scores_from={source}"])
    with RunLock(tmp_path / "b"):  # the run directory of the study that reuses the scores
        pass
    assert {s.name: s.state for s in study_status(cfg)}["scoring"] == "pending"
    finished_scoring(source, scoring_hash(cfg))
    assert {s.name: s.state for s in study_status(cfg)}["scoring"] == "done"  # not pending forever


def test_relative_scores_from_is_read_from_the_config_files_folder(tmp_path, monkeypatch):
    (tmp_path / "configs").mkdir()
    config = tmp_path / "configs" / "ablation.yaml"
    config.write_text("data:\n  scores_from: ../runs/a/scoring\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = load_config(config)
    assert cfg.data.scores_from == str((tmp_path / "runs" / "a" / "scoring").resolve())
    # a launched part rereads the run's study.yaml from another folder: it must name the same scoring folder
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "study.yaml").write_text(dump_config(cfg))
    assert load_config(tmp_path / "run" / "study.yaml").data.scores_from == cfg.data.scores_from
    # typed on the command line, a relative path is the shell's: read from the current folder
    assert load_config(config, ["data.scores_from=x/scoring"]).data.scores_from == str((elsewhere / "x" / "scoring")
                                                                                        .resolve())


def test_missing_or_other_world_scores_from_is_refused_before_the_run_directory_exists(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["study", SMOKE, "--out", str(run), f"data.scores_from={tmp_path / 'nope'}"]) == 2
    err = capsys.readouterr().err
    assert "data.scores_from" in err and "is not a folder" in err and "remove data.scores_from" in err
    assert "rerun to continue" not in err and not run.exists()

    other = load_config(SMOKE, ["world.organism.seed=7"])  # the scoring folder of a study of another world
    source = finished_scoring(tmp_path / "a" / "scoring", scoring_hash(other))
    assert main(["study", SMOKE, "--out", str(run), f"data.scores_from={source}"]) == 2
    err = capsys.readouterr().err
    assert "scored with another world or scorer config" in err and "rerun to continue" not in err
    assert not run.exists()


def test_two_parts_started_together_run_the_data_stage_once(tmp_path, monkeypatch):
    """Launched parts hold the run's lock shared; the data stage must still be built by one of them only."""
    run = tmp_path / "run"
    cfg = load_config(SMOKE, [f"out_dir={run}"])
    built, errors = [], []

    def data_stage(cfg, world, folder, scoring_dir):  # a slow data stage behind the real step marker
        marker = StepMarker(folder, "data-hash")
        if not marker.is_done():
            marker.start()
            built.append(threading.current_thread().name)
            time.sleep(0.5)
            marker.finish()
        return folder

    monkeypatch.setattr(study_module, "run_data_stage", data_stage)
    both = threading.Barrier(2)

    def part(name: str) -> None:
        try:
            with RunLock(run, name):
                both.wait(timeout=10)
                assert prepare_data(cfg, None, RunDir(run)) == run / "data"
        except Exception as err:  # noqa: BLE001 (reported by the main thread)
            errors.append(err)

    threads = [threading.Thread(target=part, args=(name,), name=name) for name in ("arm-raw-s0", "arm-start_0-s0")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not errors and len(built) == 1, (built, errors)


def test_another_study_at_the_same_out_is_refused_without_force(tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    prepare_launch(load_config(SMOKE, [f"out_dir={run}", "name=first"]))  # a run of study `first`

    def stop(*args):  # a started study stops here, after it (re)wrote study.yaml
        raise ValueError("stopped by the test before the data stage")

    monkeypatch.setattr(study_module, "prepare_data", stop)
    assert main(["study", SMOKE, "--out", str(run), "name=second"]) == 2
    err = capsys.readouterr().err
    assert "another study: study name 'first'" in err and "--force" in err
    assert load_config(run / "study.yaml").name == "first"  # untouched
    assert main(["study", SMOKE, "--out", str(run), "name=first", "world.organism.seed=7"]) == 2
    err = capsys.readouterr().err
    assert "another world (changed: world.organism)" in err and "--force" in err
    assert main(["study", SMOKE, "--out", str(run), "name=first", "pretrain.lr=0.001"]) == 2  # the same study
    assert "stopped by the test" in capsys.readouterr().err
    assert main(["study", SMOKE, "--out", str(run), "name=second", "--force"]) == 2
    assert "stopped by the test" in capsys.readouterr().err
    assert load_config(run / "study.yaml").name == "second"
