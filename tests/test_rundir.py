"""The run directory never loses or mislabels data: marker, lock, owned-only deletion, relative paths.

    python -m pytest tests/test_rundir.py -q
"""

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from safepretrain.cli import main
from safepretrain.config import ConfigError, load_config
from safepretrain.rundir import RUN_MARKER, RunDirError, RunLock, check_run_dir, inside_run, relative_to_run
from safepretrain.utils import StepFolderError, StepMarker

ROOT = Path(__file__).parents[1]


@pytest.mark.parametrize("name", [".", "..", "..."])
def test_dot_names_are_refused(name):
    with pytest.raises(ConfigError, match="name"):
        load_config(None, [f"name={name}"])


def test_foreign_folder_as_out_is_refused_and_left_untouched(tmp_path, capsys):
    out = tmp_path / "mine"
    (out / "data").mkdir(parents=True)
    (out / "data" / "precious.txt").write_text("keep me")
    assert main(["study", str(ROOT / "configs" / "smoke.yaml"), "--out", str(out)]) == 2
    assert "not a safepretrain run directory" in capsys.readouterr().err
    assert (out / "data" / "precious.txt").read_text() == "keep me"
    assert sorted(p.name for p in out.iterdir()) == ["data"]  # nothing written beside it either


def test_out_that_is_a_file_is_refused(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(RunDirError, match="is a file"):
        check_run_dir(f)


def _read_only_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "read_only"
    folder.mkdir()
    folder.chmod(0o555)
    return folder / "run"


@pytest.mark.parametrize("where", ["under_a_file", "read_only", "proc"])
def test_unwritable_out_is_refused_with_a_message_not_a_traceback(tmp_path, capsys, where):
    if where == "read_only" and os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")
    (tmp_path / "file").write_text("x")
    out = {"under_a_file": tmp_path / "file" / "run", "read_only": _read_only_folder(tmp_path),
           "proc": Path("/proc/safepretrain-no-such-process/run")}[where]  # /proc refuses even root
    assert main(["study", str(ROOT / "configs" / "smoke.yaml"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"--out {out}" in err and "choose" in err and "Traceback" not in err


def test_empty_or_marked_folders_are_accepted(tmp_path):
    check_run_dir(tmp_path / "new")  # not there yet
    (tmp_path / "empty").mkdir()
    check_run_dir(tmp_path / "empty")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / RUN_MARKER).touch()
    (tmp_path / "run" / "study.yaml").write_text("name: x\n")
    check_run_dir(tmp_path / "run")


def test_step_marker_wipes_only_its_own_folders(tmp_path):
    foreign = tmp_path / "data"
    foreign.mkdir()
    (foreign / "user.txt").write_text("not ours")
    with pytest.raises(StepFolderError, match="refusing"):
        StepMarker(foreign, "h1").start()
    assert (foreign / "user.txt").is_file()

    ours = tmp_path / "step"
    m = StepMarker(ours, "h1")
    m.start()
    (ours / "partial.bin").write_text("half")
    StepMarker(ours, "h1").start()  # same config: partial outputs are kept for the resume
    assert (ours / "partial.bin").is_file()
    StepMarker(ours, "h2").start()  # another config: our own stale outputs go
    assert not (ours / "partial.bin").exists()


def test_second_lock_on_one_run_dir_fails_at_once(tmp_path):
    with RunLock(tmp_path / "run"):
        with pytest.raises(RunDirError, match="another safepretrain study"):
            RunLock(tmp_path / "run").__enter__()
    with RunLock(tmp_path / "run"):  # released on exit
        pass


def test_second_study_process_on_a_locked_run_dir_exits_with_a_message(tmp_path):
    run = tmp_path / "run"
    with RunLock(run):
        proc = subprocess.run([sys.executable, "-m", "safepretrain.cli", "study", str(ROOT / "configs" / "smoke.yaml"),
                               "--out", str(run)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "another safepretrain study" in proc.stderr
    assert not (run / "data").exists() and not (run / "study.yaml").exists()  # it did no work


def test_stored_paths_are_relative_and_stay_inside_the_run(tmp_path):
    run = tmp_path / "run"
    ckpt = run / "arms" / "a" / "seed0" / "pretrain" / "ckpt" / "step_000010"
    stored = relative_to_run(ckpt, run)
    assert stored == "arms/a/seed0/pretrain/ckpt/step_000010"
    assert inside_run(stored, tmp_path / "copy") == (tmp_path / "copy").resolve() / stored
    for bad in ("/etc/passwd", "../other/ckpt", "arms/../../x"):
        with pytest.raises(RunDirError, match="outside the run directory"):
            inside_run(bad, run)


def test_a_changed_output_is_reported_and_the_step_recomputed(tmp_path, caplog):

    step = tmp_path / "step"
    m = StepMarker(step, "h1")
    m.start()
    (step / "shard.bin").write_bytes(b"\x01\x02\x03\x04")
    m.finish(outputs=[step / "shard.bin"])
    assert StepMarker(step, "h1").is_done()
    (step / "shard.bin").write_bytes(b"\x00\x00\x00\x00")  # zero-filled, same size
    again = StepMarker(step, "h1")
    with caplog.at_level(logging.WARNING, logger="safepretrain"):
        assert not again.is_done()
    assert "shard.bin: checksum mismatch" in caplog.text
    again.start()  # recompute from scratch: the corrupt output is gone
    assert not (step / "shard.bin").exists() and not (step / "done.json").exists()


def test_truncated_json_is_named_without_a_traceback(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / RUN_MARKER).touch()
    (run / "study.yaml").write_text("name: x\n")
    (run / "eval" / "a" / "seed0" / "base" / "topk" / "asr").mkdir(parents=True)
    (run / "eval" / "a" / "seed0" / "base" / "topk" / "asr" / "results.json").write_text('{"arm": "a", "ro')
    (run / "data").mkdir()
    (run / "data" / "report_card.json").write_text("{}")
    assert main(["report", str(run)]) == 2
    assert "results.json is not valid JSON" in capsys.readouterr().err
