"""Launchers: the study as parts with dependencies, as Slurm scripts and as parallel local subprocesses.

    python -m pytest tests/test_launch.py -q
"""

import csv
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import safepretrain.run.launchers.local_parallel as launch
from safepretrain.cli import main
from safepretrain.config import load_config
from safepretrain.run.parts import parse_part, study_parts

ROOT = Path(__file__).parents[1]
SMOKE = str(ROOT / "configs" / "smoke.yaml")
DDP = ["pretrain.distributed=ddp", "ift.distributed=ddp", "benign_ft.distributed=ddp", "harmful_ft.distributed=ddp"]


def test_parts_form_a_dag_with_the_trunk_before_its_branches():
    cfg = load_config(SMOKE, [])
    parts = {p.name: p for p in study_parts(cfg)}
    assert len(parts) == 1 + 2 + 5 * 2 + 1  # prepare, a trunk per seed, arms x seeds, report
    assert parts["arm-raw-s0"].needs == ("prepare",)  # raw never shares the safe-only trunk
    assert parts["arm-start_60-s1"].needs == ("prepare", "trunk-s1")
    assert len(parts["report"].needs) == 10
    order = list(parts)
    assert all(order.index(d) < order.index(n) for n, p in parts.items() for d in p.needs)
    with pytest.raises(ValueError, match="arm:raw:0"):
        parse_part("arm:nope:0", cfg)


def test_slurm_dry_run_writes_scripts_and_submit_wires_the_dependencies(tmp_path, capsys):
    run = tmp_path / "run"
    fake = tmp_path / "bin"
    fake.mkdir()
    calls = tmp_path / "sbatch.calls"
    (fake / "sbatch").write_text(f'#!/bin/bash\necho "$@" >> {calls}\nwc -l < {calls}\n')  # job id = call number
    (fake / "sbatch").chmod(0o755)
    env_path = f"{fake}:{os.environ['PATH']}"
    os.environ["PATH"], old = env_path, os.environ["PATH"]
    try:
        assert main(["study", SMOKE, "--out", str(run), "--launcher", "slurm", "--dry-run", *DDP,
                     "launch.slurm.gpus_per_node=4", "launch.slurm.nodes=2", "launch.slurm.partition=gpu"]) == 0
    finally:
        os.environ["PATH"] = old
    assert not calls.exists()  # --dry-run submits nothing
    out = run / "launch" / "slurm"
    arm = (out / "arm-start_20-s1.sbatch").read_text()
    for line in ("#SBATCH --nodes=2", "#SBATCH --gpus-per-node=4", "#SBATCH --partition=gpu",
                 f'#SBATCH --output="{run}/logs/slurm/%x-%j.out"'):
        assert line in arm
    assert re.search(r"srun torchrun --nnodes \$SLURM_NNODES --nproc_per_node 4 .*--rdzv_backend c10d .*"
                     rf"-m safepretrain study {run}/study.yaml --out {run} --only arm:start_20:1", arm)
    prepare = (out / "prepare.sbatch").read_text()
    assert "torchrun" not in prepare and "--only prepare" in prepare and "--gpus-per-node" not in prepare
    for script in out.glob("*"):
        assert subprocess.run(["bash", "-n", str(script)]).returncode == 0, script
    assert load_config(str(run / "study.yaml"), []).pretrain.distributed == "ddp"  # the parts' resolved config
    # submitting: every part once, each after its dependencies' job ids
    subprocess.run(["bash", str(out / "submit.sh")], check=True, capture_output=True,
                   env={**os.environ, "PATH": env_path})
    submitted = calls.read_text().splitlines()
    ids = {Path(line.split()[-1]).stem: str(i) for i, line in enumerate(submitted, 1)}
    assert len(submitted) == len(study_parts(load_config(str(run / "study.yaml"), []))) == 14
    wants = {Path(line.split()[-1]).stem: re.findall(r"afterok:([\d:]+)", line) for line in submitted}
    assert wants["prepare"] == []
    assert wants["arm-start_20-s1"] == [f"{ids['prepare']}:{ids['trunk-s1']}"]
    assert sorted(wants["report"][0].split(":")) == sorted(v for k, v in ids.items() if k.startswith("arm-"))


def test_slurm_without_data_parallel_stages_trains_on_one_gpu_without_torchrun(tmp_path):
    run = tmp_path / "run"
    assert main(["study", SMOKE, "--out", str(run), "--launcher", "slurm", "--dry-run"]) == 0
    arm = (run / "launch" / "slurm" / "arm-raw-s0.sbatch").read_text()
    assert "torchrun" not in arm and "#SBATCH --gpus-per-node=1" in arm and "--only arm:raw:0" in arm


@pytest.mark.slow
def test_local_parallel_runs_every_part_once_and_status_shows_them_done(tmp_path):
    run = tmp_path / "run"
    small = ["seeds=[0]", "curriculum.arms=[{name: raw, data: raw}, {name: start_20, start: 0.2}, "
             "{name: safe_only, start: 1.0}]", "eval.attacks=[]", "eval.decoders=[topk]", "launch.max_parallel=2",
             "launch.threads=1",  # cores ÷ max_parallel on the 2-core CI machine: parts do not oversubscribe
             "eval.n_harmful=8", "eval.n_benign_edgy=8", "eval.n_pairs=8", "eval.probe.n_per_class=8"]
    done = subprocess.run([sys.executable, "-m", "safepretrain", "study", SMOKE, "--out", str(run),
                           "--launcher", "local-parallel", *small], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    finished = re.findall(r"\[launch\] (\S+): done", done.stdout)
    assert sorted(finished) == sorted(p.name for p in study_parts(load_config(str(run / "study.yaml"), [])))
    rows = list(csv.DictReader(open(run / "report" / "results.csv")))
    assert {r["arm"] for r in rows} == {"raw", "start_20", "safe_only"}
    for part in ("prepare", "trunk-s0", "arm-raw-s0", "report"):
        assert (run / "logs" / f"study-{part}.log").is_file()  # one log per part
    logs = "".join(p.read_text() for p in (run / "logs").glob("study-*.log"))
    assert logs.count("[pretrain trunk s0] step 00001/") == 1  # the raw arm's part, beside it, never trains it
    assert logs.count("data: datatrove passes") == 1
    status = subprocess.run([sys.executable, "-m", "safepretrain", "study", "--status", "--out", str(run)],
                            capture_output=True, text=True, timeout=120).stdout
    assert re.match(rf"{run}: \d+ done\n", status) and "pending" not in status and "failed" not in status


def test_local_parallel_runs_what_it_can_around_a_failed_part(tmp_path, monkeypatch):
    """The scheduler alone (parts faked): a failed trunk names its log; the arms that branch from it are skipped,
    the others still run, and the report waits for a rerun."""

    cfg = load_config(SMOKE, ["seeds=[0]", f"out_dir={tmp_path}"])
    ran = []

    def fake_run(command, **kwargs):
        part = command[command.index("--only") + 1]
        ran.append(part)
        return subprocess.CompletedProcess(command, 1 if part == "trunk:0" else 0, "", "boom")

    monkeypatch.setattr(launch.subprocess, "run", fake_run)
    state = launch.run_local_parallel(cfg, tmp_path, tmp_path / "study.yaml", max_parallel=2)
    assert state["trunk-s0"].startswith("failed (rc 1; log ") and "study-trunk-s0.log" in state["trunk-s0"]
    assert (tmp_path / "logs" / "study-trunk-s0.log").read_text() == "boom"
    assert {k for k, v in state.items() if v == "skipped (needs trunk-s0)"} == {
        "arm-start_20-s0", "arm-start_60-s0", "arm-safe_only-s0"}
    assert state["arm-raw-s0"] == state["arm-start_0-s0"] == "done"
    assert state["report"].startswith("skipped") and "report" not in ran
