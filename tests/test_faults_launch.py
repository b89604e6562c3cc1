"""Issue 21 (items 9, 12, part of 10 and the low ones): every launcher gives the same run, step markers that are
JSON but not objects, `--status` on what is not a run, Slurm paths with spaces, test timeouts on a busy machine.

    python -m pytest tests/test_faults_launch.py -q            # the fast ones: -m "not slow"
"""

import importlib.util
import json
import logging
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import safepretrain.run.launchers.local_parallel as local_parallel
from safepretrain.cli import main
from safepretrain.config import load_config
from safepretrain.run import study
from safepretrain.run.status import study_status
from safepretrain.rundir import RunDir
from safepretrain.utils import CorruptFileError, StepMarker

ROOT = Path(__file__).parents[1]
SMOKE = str(ROOT / "configs" / "smoke.yaml")
# the smallest study the launcher tests run: one seed, one arm (no trunk), top-k decoding, few prompts
TINY = ["seeds=[0]", "curriculum.arms=[{name: raw, data: raw}]", "eval.attacks=[]", "eval.decoders=[topk]",
        "eval.n_harmful=8", "eval.n_benign_edgy=8", "eval.n_pairs=8", "eval.probe.n_per_class=8"]


def _run_dir(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / ".safepretrain-run").touch()
    return path


# ---- item 12: the launcher changed the numbers (local-parallel parts took a share of the cores)


def test_launched_parts_run_with_the_threads_of_a_local_run(tmp_path, monkeypatch):
    """The local-parallel launcher gives its parts this process's environment (no core share of its own), and each
    part's study process fixes the same count as a local run: `launch.threads`, else OMP_NUM_THREADS, else the
    CPUs it may use."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    cfg = load_config(SMOKE, ["seeds=[0]", f"out_dir={tmp_path}"])
    envs = []

    def fake_run(command, **kwargs):
        envs.append(kwargs.get("env") or dict(os.environ))
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(local_parallel.subprocess, "run", fake_run)
    local_parallel.run_local_parallel(cfg, tmp_path, tmp_path / "study.yaml", max_parallel=2)
    assert envs and all("OMP_NUM_THREADS" not in env for env in envs)  # a part resolves its threads as a local run

    threads = getattr(study, "study_threads", None)
    assert threads is not None, "the study fixes no thread count"
    assert threads(cfg) == len(os.sched_getaffinity(0))
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert threads(cfg) == 3
    assert threads(load_config(SMOKE, ["launch.threads=1"])) == 1

    # the study sets it before any work: even one that stops at once (its --out is a file) has set it
    (tmp_path / "afile").write_text("x")
    before = torch.get_num_threads()
    try:
        with pytest.raises(Exception, match="is a file"):
            study.run_study(load_config(SMOKE, ["launch.threads=1", f"out_dir={tmp_path / 'afile'}"]))
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


@pytest.mark.slow
def test_local_and_local_parallel_give_byte_identical_results_and_manifests(tmp_path):
    """The smallest launched study (prepare, one arm, report) against a local run of the same config: the same
    results.csv byte for byte, and a manifest.json with the same keys (the thread count among them). The data stage
    is run once and copied, the other parts run under each launcher; in the copy the judge step's done.json is
    valid JSON but not an object, which the launched study redoes with a warning instead of a traceback.

    Three threads: on 2 cores the model's gradients are bit-equal with 1, 2 and 4 threads but not with 3 (or 8), so
    the parts' old share of the cores (cores // max_parallel) changed the numbers only where the split differed."""
    local, launched = tmp_path / "local", tmp_path / "launched"
    env = {**os.environ, "OMP_NUM_THREADS": "3"}

    def study_cmd(out: Path, *extra: str) -> list[str]:
        return [sys.executable, "-m", "safepretrain", "study", SMOKE, "--out", str(out), *extra, *TINY]

    prepared = subprocess.run(study_cmd(local, "--only", "prepare"), capture_output=True, text=True, timeout=1200,
                              env=env)
    assert prepared.returncode == 0, prepared.stderr[-3000:]
    shutil.copytree(local, launched, symlinks=True)
    for name in ("manifest.json", "study.yaml", "logs"):  # the launched study writes its own
        path = launched / name
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    (launched / "judge" / "done.json").write_text("[]\n")

    runs = [subprocess.Popen(study_cmd(local), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env),
            subprocess.Popen(study_cmd(launched, "--launcher", "local-parallel"), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env)]
    outs = [p.communicate(timeout=1500) for p in runs]
    for p, (_, err) in zip(runs, outs):
        assert p.returncode == 0, err[-3000:]
    assert "Traceback" not in outs[1][1]
    assert "not a step marker" in (launched / "logs" / "study-prepare.log").read_text()

    assert (launched / "report" / "results.csv").read_bytes() == (local / "report" / "results.csv").read_bytes()
    mine, theirs = (json.loads((run / "manifest.json").read_text()) for run in (local, launched))
    assert sorted(theirs) == sorted(mine)
    assert theirs["threads"] == mine["threads"] == 3
    assert (theirs["launcher"], mine["launcher"]) == ("local-parallel", "local")
    assert theirs["python"] and theirs["hashes"] == mine["hashes"] and theirs["training_ranks"] == 1
    assert "Python None" not in (launched / "report" / "report.html").read_text()


# ---- item 10 (part): a done.json that is valid JSON but not an object


@pytest.mark.parametrize("text", ["[]", "3", '"done"', '{"config_hash": "h", "checksums": ["ckpt"]}'])
def test_a_marker_that_is_json_but_not_an_object_is_redone_not_a_traceback(tmp_path, caplog, text):
    folder = tmp_path / "step"
    folder.mkdir()
    (folder / ".config_hash").write_text("h")
    (folder / "done.json").write_text(text)
    (folder / "partial.bin").write_text("old")
    marker = StepMarker(folder, "h")
    with caplog.at_level(logging.WARNING, logger="safepretrain"):
        assert not marker.is_done()
    assert marker.corrupt and "not a step marker" in caplog.text and "recomputing" in caplog.text
    marker.start()  # the step redoes itself from an empty folder
    assert not (folder / "partial.bin").exists() and not (folder / "done.json").exists()
    marker.finish()
    assert StepMarker(folder, "h").is_done()


def test_reading_a_finished_checkpoint_from_a_marker_that_is_not_an_object_names_the_file(tmp_path):
    run = _run_dir(tmp_path / "run")
    done = run / "arms" / "raw" / "seed0" / "pretrain" / "done.json"
    done.parent.mkdir(parents=True)
    done.write_text("[1, 2]")
    with pytest.raises(CorruptFileError, match="not a step marker"):
        RunDir(run).finished_checkpoint("raw", 0, "base")


# ---- --status: not a run, a corrupt marker, a deleted checkpoint


def test_status_of_a_folder_that_is_not_a_run_says_so(tmp_path, capsys):
    other = tmp_path / "notes"
    other.mkdir()
    (other / "todo.txt").write_text("x")
    assert main(["study", SMOKE, "--out", str(other), "--status"]) == 2
    err = capsys.readouterr()
    assert "is not a safepretrain run directory" in err.err and "pending" not in err.out
    assert main(["study", SMOKE, "--out", str(tmp_path / "nothing"), "--status"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "nothing").exists()  # asking wrote nothing


def test_status_shows_a_corrupt_marker_as_corrupt_and_the_other_steps_as_usual(tmp_path, capsys):
    run = _run_dir(tmp_path / "run")
    (run / "scoring").mkdir()
    (run / "scoring" / "done.json").write_text("[]")
    (run / "data").mkdir()
    (run / "data" / "done.json").write_text(json.dumps({"config_hash": "x", "step_seconds": 2.0, "checksums": {}}))
    (run / "judge").mkdir()
    (run / "judge" / "done.json").write_text('{"config_hash": ')  # truncated
    (run / "failed.json").write_text("[]")  # unreadable as a failure: only its detail is lost
    cfg = load_config(SMOKE, [f"out_dir={run}"])
    states = {s.name: s for s in study_status(cfg)}
    assert states["scoring"].state == states["judge"].state == "corrupt"
    assert "scoring/done.json" in states["scoring"].detail and "rerun" in states["scoring"].detail
    assert states["data"].state == "done" and states["data"].seconds == 2.0
    assert {s.state for n, s in states.items() if n not in ("scoring", "data", "judge")} == {"pending"}
    assert main(["study", SMOKE, "--out", str(run), "--status"]) == 0
    out = capsys.readouterr().out
    assert "1 done" in out and "2 corrupt" in out


def test_status_of_a_done_step_whose_checkpoint_was_deleted_is_missing(tmp_path):
    run = _run_dir(tmp_path / "run")
    stage = run / "arms" / "raw" / "seed0" / "pretrain"
    weights = stage / "ckpt" / "step_000040" / "model.safetensors"
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"w")
    (stage / "done.json").write_text(json.dumps({
        "config_hash": "x", "checkpoint": "arms/raw/seed0/pretrain/ckpt/step_000040", "step_seconds": 5.0,
        "checksums": {"ckpt/step_000040/model.safetensors": "abc"}}))
    cfg = load_config(SMOKE, [f"out_dir={run}", "seeds=[0]"])
    assert {s.name: s for s in study_status(cfg)}["pretrain raw s0"].state == "done"
    shutil.rmtree(stage / "ckpt")
    state = {s.name: s for s in study_status(cfg)}["pretrain raw s0"]
    assert state.state == "missing" and "ckpt/step_000040" in state.detail and "rerun" in state.detail


# ---- Slurm scripts: a run directory with spaces


def test_slurm_scripts_and_the_submit_hint_quote_a_run_directory_with_spaces(tmp_path, capsys):
    run = tmp_path / "my runs" / "the study's run"
    assert main(["study", SMOKE, "--out", str(run), "--launcher", "slurm", "--dry-run"]) == 0
    hint = capsys.readouterr().out.splitlines()[-1]
    submit = run / "launch" / "slurm" / "submit.sh"
    assert shlex.split(hint.split("submit with: ", 1)[1]) == ["bash", str(submit)]
    script = (run / "launch" / "slurm" / "arm-raw-s0.sbatch").read_text()
    # sbatch reads a directive's value as a POSIX shell word would (quotes group, `\` escapes, `#` starts a comment)
    options = [shlex.split(line.removeprefix("#SBATCH "), comments=True) for line in script.splitlines()
               if line.startswith("#SBATCH ")]
    assert ["--output=" + str(run / "logs" / "slurm" / "%x-%j.out")] in options
    assert all(len(words) == 1 for words in options)
    assert subprocess.run(["bash", "-n", str(submit)]).returncode == 0


# ---- test timeouts sized from the machine (tests/conftest.py)


def _conftest():
    """tests/conftest.py as a module of its own (pytest imports it under a name that depends on the rootdir)."""
    spec = importlib.util.spec_from_file_location("timeouts_conftest", ROOT / "tests" / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_test_timeout_grows_with_the_machine_load(monkeypatch):
    monkeypatch.delenv("SAFEPRETRAIN_TEST_TIMEOUT_SCALE", raising=False)
    conftest = _conftest()
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setattr(os, "getloadavg", lambda: (10.0, 6.0, 2.0))  # the fresh clone's failing suite: load ~10
    assert conftest.timeout_scale() == 5.0
    monkeypatch.setattr(os, "getloadavg", lambda: (0.3, 0.5, 0.4))  # idle: the configured timeout
    assert conftest.timeout_scale() == 1.0
    monkeypatch.setattr(os, "getloadavg", lambda: (500.0, 500.0, 500.0))  # bounded: a hang is still caught
    assert conftest.timeout_scale() == conftest.MAX_SCALE
    monkeypatch.setenv("SAFEPRETRAIN_TEST_TIMEOUT_SCALE", "nope")
    with pytest.raises(pytest.UsageError, match="SAFEPRETRAIN_TEST_TIMEOUT_SCALE"):
        conftest.timeout_scale()


def test_a_slow_test_passes_on_a_slow_machine_and_a_hung_test_still_fails(tmp_path):
    """A pytest session with this suite's conftest, a 1 s timeout and a machine 4x slow: a test that takes 2 s
    passes, a test that hangs fails (after 4 s, not never)."""
    if (ROOT / "tests" / "conftest.py").is_file():
        shutil.copy(ROOT / "tests" / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "test_inner.py").write_text(
        "import time\n\n\ndef test_slow():\n    time.sleep(2)\n\n\ndef test_hung():\n    time.sleep(300)\n")
    t0 = time.monotonic()
    inner = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "timeout=1",
                            "--rootdir", str(tmp_path), str(tmp_path / "test_inner.py")], cwd=tmp_path,
                           capture_output=True, text=True, timeout=120,
                           env={**os.environ, "SAFEPRETRAIN_TEST_TIMEOUT_SCALE": "4"})
    took = time.monotonic() - t0
    assert "1 failed, 1 passed" in inner.stdout, inner.stdout[-3000:]
    assert "test_hung" in inner.stdout and "Timeout" in inner.stdout
    assert took < 60
