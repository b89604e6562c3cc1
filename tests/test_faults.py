"""Faults injected into real processes: a SIGKILL in the data stage leaves nothing behind and loses nothing.

    python -m pytest tests/test_faults.py -q
"""

import glob
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
pytestmark = pytest.mark.slow

DATA_ONLY = """
import sys
from pathlib import Path
from safepretrain.config import load_config
from safepretrain.data.pipeline import run_data_stage
from safepretrain.world import world_for
run = Path(sys.argv[1])
cfg = load_config(sys.argv[2], [f"out_dir={run}"])
run_data_stage(cfg, world_for(cfg), run)
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


def test_sigkill_in_the_data_stage_leaves_no_process_and_counts_stay_whole(tmp_path):
    script = tmp_path / "data_only.py"
    script.write_text(DATA_ONLY)
    run = tmp_path / "run"
    config = str(ROOT / "configs" / "smoke-realtext.yaml")  # its ranks take seconds: room to kill between them
    pymp_before = set(glob.glob("/tmp/pymp-*"))
    proc = subprocess.Popen([sys.executable, str(script), str(run), config], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    first_rank = run / "data" / "logs" / "completions" / "00000"
    deadline = time.time() + 300
    while not first_rank.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert first_rank.exists() and proc.poll() is None, "the data stage should be between its two ranks"
    children = _descendants(proc.pid)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(1.0)
    assert [c for c in children if _alive(c)] == []  # no orphaned datatrove manager or workers
    assert set(glob.glob("/tmp/pymp-*")) - pymp_before == set()
    assert not (run / "data" / "logs" / "completions" / "00001").exists()

    subprocess.run([sys.executable, str(script), str(run), config], check=True, capture_output=True, timeout=600)
    stats = json.loads((run / "data" / "logs" / "stats.json").read_text())
    reader = next(s for s in stats if "read corpus" in s["name"])
    documents = sum(1 for line in (run / "data" / "input" / "world.jsonl").read_text().splitlines() if line)
    assert reader["stats"]["read"]["total"] == documents  # both ranks, not only the resumed one
