"""`safepretrain study --status` and the `--dry-run` time estimate.

    python -m pytest tests/test_status.py -q
"""

import json
from pathlib import Path

import pytest

from safepretrain.cli import main
from safepretrain.config import load_config
from safepretrain.run.status import study_status
from safepretrain.rundir import RunLock
from safepretrain.train.compute import time_plan
from safepretrain.train.model import flops_per_token

ROOT = Path(__file__).parents[1]


def test_status_reads_done_failed_running_interrupted_and_pending_steps(tmp_path, capsys):
    run = tmp_path / "run"
    cfg = load_config(str(ROOT / "configs" / "smoke.yaml"), [f"out_dir={run}"])
    (run / "scoring").mkdir(parents=True)
    (run / ".safepretrain-run").touch()
    (run / "scoring" / "done.json").write_text(json.dumps({"config_hash": "x", "step_seconds": 12.5}))
    (run / "data").mkdir()
    (run / "data" / ".config_hash").write_text("y")
    (run / "failed.json").write_text(json.dumps({"step": "data/scorer", "error": "OSError: disk full",
                                                 "log": "study.log"}))  # a sub-step of data
    states = {s.name: s for s in study_status(cfg)}
    assert states["scoring"].state == "done" and states["scoring"].seconds == 12.5
    assert states["data"].state == "failed" and "disk full" in states["data"].detail
    assert "study.log" in states["data"].detail
    assert {s.state for n, s in states.items() if n not in ("scoring", "data")} == {"pending"}
    # scoring, data, judge; a trunk per seed; 5 arms x 10 steps (4 trained stages, their evaluations, 2 curves); report
    assert len(states) == 3 + 2 + 2 * 5 * 10 + 1
    with RunLock(run):  # a study holds the lock: the started step is running, not failed
        assert {s.name: s.state for s in study_status(cfg)}["data"] == "running"
    (run / "failed.json").unlink()
    assert {s.name: s.state for s in study_status(cfg)}["data"] == "interrupted"  # killed: a rerun resumes it
    assert main(["study", str(ROOT / "configs" / "smoke.yaml"), "--out", str(run), "--status"]) == 0
    printed = capsys.readouterr().out
    assert "1 done" in printed and "1 interrupted" in printed and "interrupted" in printed.splitlines()[3]


def test_dry_run_time_estimate_is_model_flops_over_the_assumed_rate(monkeypatch):
    cfg = load_config(str(ROOT / "configs" / "paper-1.7b.yaml"), [])
    monkeypatch.setenv("SAFEPRETRAIN_PEAK_TFLOPS", "1000")
    monkeypatch.setenv("SAFEPRETRAIN_MFU", "0.5")
    [line] = time_plan(cfg, world_size=64)
    tokens = cfg.pretrain_steps * cfg.pretrain.batch_size * cfg.pretrain.seq_len
    hours = tokens * flops_per_token(cfg.model, cfg.pretrain.seq_len, cfg.tokenizer.vocab_size) \
        / (64 * 1000e12 * 0.5) / 3600
    assert f"pretrain ~{hours:,.1f} h" in line and "64 x 1000 TFLOP/s x 50% MFU (assumed)" in line
    m = cfg.model  # 6N for the weights plus 12·L·d·T for attention scores
    assert flops_per_token(cfg.model, 2048, cfg.tokenizer.vocab_size) == pytest.approx(
        6 * 1.711e9 + 12 * m.n_layers * m.d_model * 2048, rel=0.01)
