"""Faults injected into real processes: a SIGKILL in any stage leaves nothing behind and loses nothing.

    python -m pytest tests/test_faults.py -q
"""

import glob
import gzip
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from safepretrain.config import load_config
from safepretrain.run.status import study_status

ROOT = Path(__file__).parents[1]
pytestmark = pytest.mark.slow

DATA_ONLY = """
import sys
from pathlib import Path
from safepretrain.config import load_config
from safepretrain.run.study import prepare_data
from safepretrain.rundir import RunDir
from safepretrain.world import world_for
if __name__ == "__main__":  # data.workers > 1 spawns processes that import this file
    run = Path(sys.argv[1])
    cfg = load_config(sys.argv[2], [f"out_dir={run}", *sys.argv[3:]])
    prepare_data(cfg, world_for(cfg), RunDir(run))
"""


def _descendants(pid: int) -> set[int]:
    out, todo = set(), [pid]
    while todo:
        p = todo.pop()
        for task in glob.glob(f"/proc/{p}/task/*/children"):
            try:
                kids = {int(x) for x in Path(task).read_text().split()}
            except OSError:
                continue
            out |= kids
            todo += list(kids)
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _wait_for(condition, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not condition() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.1)


def test_sigkill_of_parallel_data_workers_leaves_no_process_and_counts_stay_whole(tmp_path):
    """data.workers=2: killed while both Pool workers run a rank (one worker: the every-stage test below)."""
    workers = 2
    script = tmp_path / "data_only.py"
    script.write_text(DATA_ONLY)
    run = tmp_path / "run"
    config = str(ROOT / "configs" / "smoke-realtext.yaml")  # its ranks take seconds: room to kill
    command = [sys.executable, str(script), str(run), config, f"data.workers={workers}",
               "data.scorer.max_label_examples=150"]  # a quicker scorer fit: the kill is in the scoring pass
    pymp_before = set(glob.glob("/tmp/pymp-*"))
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    completions = run / "scoring" / "logs" / "score" / "completions"
    task_logs = [run / "scoring" / "logs" / "score" / "logs" / f"task_{r:05d}.log" for r in range(workers)]
    _wait_for(lambda: all(p.exists() for p in task_logs), proc)  # every worker is inside its rank
    assert all(p.exists() for p in task_logs)
    assert proc.poll() is None and not (completions / "00001").exists(), "the kill should land mid-stage"
    children = _descendants(proc.pid)
    assert len(children) >= workers
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(1.5)
    assert [c for c in children if _alive(c)] == []  # no orphaned datatrove manager or workers
    assert set(glob.glob("/tmp/pymp-*")) - pymp_before == set()

    subprocess.run(command, check=True, capture_output=True, timeout=600)
    stats = json.loads((run / "scoring" / "logs" / "score" / "stats.json").read_text())
    reader = next(s for s in stats if "read corpus" in s["name"])
    documents = sum(1 for line in (run / "scoring" / "input" / "world.jsonl").read_text().splitlines() if line)
    assert reader["stats"]["read"]["total"] == documents  # both ranks, not only the resumed one


# A reduced smoke study (one seed; raw, and two arms sharing the safe-only trunk): every stage in ~40 s.
REDUCED = ["seeds=[0]", "curriculum.arms=[{name: raw, data: raw}, {name: start_20, start: 0.2}, "
           "{name: safe_only, start: 1.0}]",
           "eval.attacks=[]", "eval.decoders=[topk, safebeam]",  # decoders and jailbreaks: the end-to-end test's
           "eval.n_harmful=8", "eval.n_benign_edgy=8", "eval.n_pairs=8", "eval.probe.n_per_class=8"]

# (stage, what shows the study is inside it, seconds to wait after that before the kill)
KILL_POINTS = [
    ("data", "scorer: fitting", 0.5),
    ("pretrain (trunk)", r"\[pretrain trunk s0\] step 00025/", 0.0),  # past its step-20 checkpoint
    ("pretrain (arm)", r"\[pretrain raw s0\] step 00030/", 0.0),
    ("evaluation", "eval/raw/seed0/base/.config_hash", 0.5),  # a file: the eval step has started
    ("instruction tuning", r"\[ift raw s0\] step 00005/", 0.0),
    ("benign finetuning", r"\[benign_ft raw s0\] step 00003/", 0.0),
    ("harmful finetuning", r"\[harmful_ft raw s0\] step 00003/", 0.0),
    ("report", r"report: \d+ arms", 0.2),
]


def _study(run: Path) -> list[str]:
    return [sys.executable, "-m", "safepretrain", "study", str(ROOT / "configs" / "smoke.yaml"), "--out", str(run),
            *REDUCED]


def _kill_in(stage: str, run: Path, sign: str, delay: float) -> None:
    """Start a study on `run`, wait until `sign` (a regex on the new part of study.log, or a file) shows it is
    in the stage, and kill -9 it there."""
    log = run / "study.log"
    seen = log.stat().st_size if log.exists() else 0

    def inside() -> bool:
        if "/" in sign and not sign.startswith("\\"):
            return (run / sign).exists()
        if not log.exists():
            return False
        with open(log, "rb") as f:
            f.seek(seen)
            return re.search(sign, f.read().decode(errors="replace")) is not None

    proc = subprocess.Popen(_study(run), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    _wait_for(inside, proc)
    time.sleep(delay)
    assert proc.poll() is None, f"the study ended before the kill in: {stage}"
    children = _descendants(proc.pid)
    os.kill(proc.pid, signal.SIGKILL)  # the study alone, not its process group: nothing may outlive it
    proc.wait()
    time.sleep(0.5)
    assert [c for c in children if _alive(c)] == [], f"processes outlived the study killed in: {stage}"


def _content(path: Path) -> str:
    """A file's content hash, leaving out what legitimately differs between two runs: a gzip header's time
    stamp and an evaluation's wall seconds."""
    if path.name.endswith(".gz"):
        data = gzip.decompress(path.read_bytes())
    elif path.name == "results.json":
        data = json.dumps({k: v for k, v in json.loads(path.read_text()).items() if k != "seconds"}).encode()
    else:
        data = path.read_bytes()
    return hashlib.sha256(data).hexdigest()


def _outputs(run: Path) -> dict[str, str]:
    """What a finished study produced: tables, samples, streams, shards, tokenizer, weights."""
    kept = ("report/results.csv", "samples.jsonl", "results.json", ".bin", ".jsonl.gz", "model.safetensors",
            "tokenizer.json", "report_card.json")
    return {str(p.relative_to(run)): _content(p) for p in sorted(run.rglob("*"))
            if p.is_file() and str(p.relative_to(run)).endswith(kept)}


def test_sigkill_in_every_stage_then_resume_equals_an_uninterrupted_study(tmp_path):
    """A study killed once in each stage (data, trunk and arm pretraining, evaluation, instruction tuning,
    benign finetuning, report), resumed after every kill, leaves no process behind and ends with exactly the
    outputs of a study that was never killed: the same documents in every stream, the same weights, samples
    and results, and no step logged twice or missing."""
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    subprocess.run(_study(reference), check=True, capture_output=True, timeout=600)
    pymp_before = set(glob.glob("/tmp/pymp-*"))
    cfg = load_config(str(ROOT / "configs" / "smoke.yaml"), [f"out_dir={killed}", *REDUCED])
    for stage, sign, delay in KILL_POINTS:
        _kill_in(stage, killed, sign, delay)
        states = {x.name: x.state for x in study_status(cfg)}  # `study --status` after the kill
        assert not {"running", "failed"} & set(states.values()), (stage, states)
        assert sum(s == "interrupted" for s in states.values()) <= 1, (stage, states)  # the killed step alone
    assert set(glob.glob("/tmp/pymp-*")) - pymp_before == set()  # no multiprocess leftovers
    subprocess.run(_study(killed), check=True, capture_output=True, timeout=600)
    assert {x.state for x in study_status(cfg)} == {"done"}

    expected, got = _outputs(reference), _outputs(killed)
    assert len(expected) > 40 and any(k.endswith("model.safetensors") for k in expected)
    assert sorted(got) == sorted(expected)  # no output missing or extra
    assert {k for k in expected if got[k] != expected[k]} == set()  # and every one identical
    stats = json.loads((killed / "scoring" / "logs" / "score" / "stats.json").read_text())
    reader = next(s for s in stats if "read corpus" in s["name"])
    assert reader["stats"]["read"]["total"] == sum(1 for _ in open(killed / "scoring" / "input" / "world.jsonl"))
    for metrics in killed.glob("arms/*/seed0/*/metrics.jsonl"):
        steps = [json.loads(x)["step"] for x in metrics.read_text().splitlines()]
        assert steps == list(range(1, len(steps) + 1)), metrics  # each step once, none missing
        ref = reference / metrics.relative_to(killed)
        assert [json.loads(x)["loss"] for x in metrics.read_text().splitlines()] == \
               [json.loads(x)["loss"] for x in ref.read_text().splitlines()]
    sections = [re.findall(r"<h2 id=\"([^\"]+)\">", (run / "report" / "report.html").read_text())
                for run in (reference, killed)]
    assert sections[0] == sections[1] and len(sections[0]) > 10  # the resumed study's HTML report is whole
    log = (killed / "study.log").read_text()
    evaluations = re.findall(r"\[eval [^\]]+\]", log)
    assert len(evaluations) == len(set(evaluations)) == 12  # 3 arms x 4 stages, none evaluated twice
    assert log.count("study done in") == 1 and "INCOMPLETE" not in (killed / "report" / "report.md").read_text()
