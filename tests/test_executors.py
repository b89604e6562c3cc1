"""`data.executor: local | slurm | ray` → datatrove executors; slurm chains submitted (sbatch faked) and waited on.

    python -m pytest tests/test_executors.py -q
"""

import json
import os
import signal
import sys
from pathlib import Path

import dill
import pytest
from datatrove.executor import slurm as dt_slurm
from datatrove.pipeline.readers import JsonlReader
from datatrove.pipeline.writers import JsonlWriter

from safepretrain.config import DataConfig
from safepretrain.config.data import RayConfig, SlurmConfig
from safepretrain.data.executors import (
    RAY_INSTALL,
    InProcessExecutor,
    SlurmJobError,
    SlurmPass,
    make_executor,
    merge_rank_stats,
    run_passes,
    slurm_job_states,
    submit_slurm,
    wait_for_slurm,
)

SLURM = SlurmConfig(partition="cpu-long", time="01:30:00", cpus_per_task=8, mem_per_cpu_gb=3, qos="high",
                    env_command="source /shared/venv/bin/activate", sbatch_args={"account": "safety"})


@pytest.fixture(autouse=True)
def _restore_environ():
    """datatrove's ranks write DATATROVE_* variables into os.environ."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


def _inputs(tmp_path: Path, n_files: int = 2, per_file: int = 3) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    for f in range(n_files):
        lines = [json.dumps({"id": f"d{f}-{i}", "text": f"document {f} {i}"}) for i in range(per_file)]
        (folder / f"{f}.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def _copy(src: Path, dst: Path) -> list:
    """A trivial pass: read the JSONL files of `src`, write them to `dst/<rank>.jsonl`."""
    return [JsonlReader(str(src), glob_pattern="*.jsonl"),
            JsonlWriter(str(dst), output_filename="${rank}.jsonl", compression=None)]


def _docs(folder: Path) -> list[str]:
    return sorted(json.loads(line)["id"] for p in folder.glob("*.jsonl") for line in p.read_text().splitlines())


def _completions(logs: Path) -> list[str]:
    return sorted(p.name for p in (logs / "completions").glob("*"))


# ---------------------------------------------------------------------------------------------------- local

@pytest.mark.parametrize("workers", [1, 2])
def test_local_chain_runs_every_rank_of_every_pass(tmp_path, workers):
    data = DataConfig(executor="local", tasks=2, workers=workers)
    src = _inputs(tmp_path)
    first = make_executor(data, _copy(src, tmp_path / "mid"), str(tmp_path / "logs1"), "copy1")
    second = make_executor(data, _copy(tmp_path / "mid", tmp_path / "out"), str(tmp_path / "logs2"), "copy2",
                           depends=first)
    assert isinstance(first, InProcessExecutor) and first.workers == workers and first.start_method == "spawn"
    assert second.depends is first
    run_passes([first, second])
    for logs in ("logs1", "logs2"):
        assert _completions(tmp_path / logs) == ["00000", "00001"]
    assert _docs(tmp_path / "out") == _docs(tmp_path / "mid") == [f"d{f}-{i}" for f in range(2) for i in range(3)]
    assert merge_rank_stats(tmp_path / "logs2")  # the per-rank stats add up
    # a rerun finds every rank complete and runs nothing
    run_passes([make_executor(data, [], str(tmp_path / "logs1"), "copy1")])


def test_local_depends_runs_the_previous_pass_first(tmp_path):
    data = DataConfig(executor="local", tasks=2)
    first = make_executor(data, _copy(_inputs(tmp_path), tmp_path / "mid"), str(tmp_path / "logs1"), "copy1")
    second = make_executor(data, _copy(tmp_path / "mid", tmp_path / "out"), str(tmp_path / "logs2"), "copy2",
                           depends=first, tasks=1)
    second.run()
    assert _completions(tmp_path / "logs1") == ["00000", "00001"] and _completions(tmp_path / "logs2") == ["00000"]
    assert len(_docs(tmp_path / "out")) == 6


# ---------------------------------------------------------------------------------------------------- slurm

@pytest.fixture
def sbatch(monkeypatch):
    """datatrove's `launch_slurm_job` (the one call of sbatch) faked: records (script, sbatch args), job ids
    101, 102, ... parsed by datatrove's own retriever from sbatch's usual answer."""
    calls = []

    def fake(script, job_id_retriever, *args):
        calls.append((script, list(args)))
        return job_id_retriever(f"Submitted batch job {100 + len(calls)}\n")

    monkeypatch.setattr(dt_slurm, "launch_slurm_job", fake)
    return calls


def _directives(script: str) -> dict[str, str]:
    out = {}
    for line in script.splitlines():
        if line.startswith("#SBATCH --"):
            key, _, value = line[len("#SBATCH --"):].partition("=")
            out[key] = value
    return out


def test_slurm_chain_is_submitted_complete(tmp_path, sbatch, monkeypatch):
    data = DataConfig(executor="slurm", tasks=3, slurm=SLURM)
    src = _inputs(tmp_path, n_files=3)
    logs1, logs2 = tmp_path / "logs1", tmp_path / "logs2"
    first = make_executor(data, _copy(src, tmp_path / "mid"), str(logs1), "sp-score")
    second = make_executor(data, _copy(tmp_path / "mid", tmp_path / "out"), str(logs2), "sp-llm", depends=first,
                           gpus=2)
    passes = submit_slurm([first, second])

    arrays = [(s, a) for s, a in sbatch if "launch_pickled_pipeline" in s]
    assert len(arrays) == 2 and len(sbatch) == 4  # datatrove adds one merge_stats job per pass
    assert [(p.name, p.job_id) for p in passes] == [("sp-score", "101"), ("sp-llm", "103")]
    for (script, args), logs, name in zip(arrays, (logs1, logs2), ("sp-score", "sp-llm")):
        d = _directives(script)
        assert d["array"] == "0-2"
        assert (d["partition"], d["cpus-per-task"], d["mem-per-cpu"], d["time"], d["job-name"], d["qos"],
                d["account"]) == ("cpu-long", "8", "3G", "01:30:00", name, "high", "safety")
        for key in ("output", "error"):
            assert Path(d[key]).parent == logs / "slurm_logs" and d[key].endswith("%A_%a.out")
        lines = script.splitlines()
        env_at = lines.index("source /shared/venv/bin/activate")
        launch_at = next(i for i, line in enumerate(lines) if "launch_pickled_pipeline" in line)
        assert env_at < launch_at and str(logs / "executor.pik") in lines[launch_at]
        assert lines[launch_at].startswith("srun ")
        for f in ("executor.pik", "executor.json", "ranks_to_run.json", "launch_script.slurm"):
            assert (logs / f).is_file(), f
        assert (logs / "slurm_logs").is_dir()
        assert "--export=ALL,RUN_OFFSET=0" in args
    assert "gpus" not in _directives(arrays[0][0]) and _directives(arrays[1][0])["gpus"] == "2"
    assert not any(a.startswith("--dependency") for a in arrays[0][1])
    assert "--dependency=afterok:101" in arrays[1][1]
    assert _directives(sbatch[1][0])["dependency"] == "afterok:101"  # pass 1's merge_stats job

    # the pickled executors run as the array tasks would (`launch_pickled_pipeline executor.pik`)
    monkeypatch.setattr(dt_slurm, "expand_slurm_nodelist", lambda nodelist: ["node1"])
    monkeypatch.setenv("SLURM_NODELIST", "node1")
    usr1 = signal.getsignal(signal.SIGUSR1)
    try:
        for logs in (logs1, logs2):
            for task in range(3):
                monkeypatch.setenv("SLURM_ARRAY_TASK_ID", str(task))
                with open(logs / "executor.pik", "rb") as f:
                    dill.load(f).run()
    finally:
        signal.signal(signal.SIGUSR1, usr1)
    assert _docs(tmp_path / "out") == _docs(src) and len(_docs(src)) == 9
    states = {"101": {"101_0": "COMPLETED", "101_[1-2]": "COMPLETED"}, "103": {"103_0": "COMPLETED"}}
    wait_for_slurm(passes, lambda ids: states, poll_s=0, timeout_s=1, sleep=lambda s: None)

    # a resubmission of complete passes submits nothing and returns at once
    sbatch.clear()
    again = [make_executor(data, [], str(logs1), "sp-score"), make_executor(data, [], str(logs2), "sp-llm")]
    run_passes(again, job_states=None, timeout_s=1)
    assert sbatch == [] and [p.job_id for p in again] == [-1, -1]


def test_slurm_max_array_size_splits_the_array(tmp_path, sbatch):
    ex = make_executor(DataConfig(executor="slurm", tasks=3, slurm=SLURM), [], str(tmp_path / "logs"), "big")
    ex.max_array_size = 2
    submit_slurm([ex])
    arrays = [(s, a) for s, a in sbatch if "launch_pickled_pipeline" in s]
    assert [_directives(s)["array"] for s, _ in arrays] == ["0-1", "0-1"]
    assert arrays[0][1] == ["--export=ALL,RUN_OFFSET=0"]
    assert arrays[1][1] == ["--export=ALL,RUN_OFFSET=1", "--dependency=afterany:101"]
    assert ex.job_id == "102"


def test_slurm_run_passes_links_undeclared_dependencies(tmp_path, sbatch):
    data = DataConfig(executor="slurm", tasks=1, slurm=SLURM)
    passes = [make_executor(data, [], str(tmp_path / f"logs{i}"), f"p{i}") for i in range(3)]
    with pytest.raises(TimeoutError):
        run_passes(passes, job_states=lambda ids: {}, poll_s=0, timeout_s=0)
    arrays = [a for s, a in sbatch if "launch_pickled_pipeline" in s]
    assert [next((x for x in a if x.startswith("--dependency")), None) for a in arrays] == [
        None, "--dependency=afterok:101", "--dependency=afterok:103"]


# ---------------------------------------------------------------------------------------------- slurm wait

class Clock:
    def __init__(self):
        self.t, self.sleeps = 0.0, []

    def sleep(self, s):
        self.sleeps.append(s)
        self.t += s

    def __call__(self):
        return self.t


def _pass(name, job_id, missing, logs="/shared/run/data/logs/score/slurm_logs", tasks=2):
    return SlurmPass(name, job_id, logs, tasks, lambda: list(missing))


def test_wait_raises_on_a_failed_task_naming_job_and_logs():
    clock = Clock()
    states = {"101": {"101_0": "COMPLETED", "101_1": "FAILED"}, "103": {"103_[0-1]": "PENDING"}}
    passes = [_pass("score", "101", [1]), _pass("llm", "103", [0, 1], logs="/x/llm/slurm_logs")]
    with pytest.raises(SlurmJobError) as e:
        wait_for_slurm(passes, lambda ids: states, poll_s=30, timeout_s=3600, sleep=clock.sleep, clock=clock)
    msg = str(e.value)
    assert "slurm job 101 failed" in msg and "101_1" in msg and "/shared/run/data/logs/score/slurm_logs" in msg
    assert "scancel 103" in msg and clock.sleeps == []


@pytest.mark.parametrize("state", ["CANCELLED", "TIMEOUT", "OUT_OF_MEMORY"])
def test_wait_raises_on_any_failure_state(state):
    with pytest.raises(SlurmJobError, match=f"slurm job 7 failed \\({state} x1"):
        wait_for_slurm([_pass("p", "7", [0])], lambda ids: {"7": {"7_0": state}}, poll_s=0, sleep=lambda s: None)


def test_wait_returns_when_completions_appear(tmp_path):
    """Real completion markers (datatrove's `completions/<rank>`), appearing one per poll."""
    ex = make_executor(DataConfig(executor="slurm", tasks=3, slurm=SLURM), [], str(tmp_path / "logs"), "score")
    ex.job_id = "101"
    (tmp_path / "logs" / "completions").mkdir(parents=True)
    polls = []

    def states(ids):
        polls.append(ids)
        (tmp_path / "logs" / "completions" / f"{len(polls) - 1:05d}").touch()
        return {"101": {"101_0": "RUNNING", "101_[1-2]": "PENDING"}}

    clock = Clock()
    wait_for_slurm([SlurmPass.of(ex)], states, poll_s=45, timeout_s=3600, sleep=clock.sleep, clock=clock)
    assert polls == [["101"]] * 3 and clock.sleeps == [45, 45]


def test_wait_times_out_with_a_clear_message():
    clock = Clock()
    states = {"101": {"101_0": "RUNNING", "101_1": "PENDING"}}
    with pytest.raises(TimeoutError) as e:
        wait_for_slurm([_pass("score", "101", [0, 1])], lambda ids: states, poll_s=60, timeout_s=150,
                       sleep=clock.sleep, clock=clock)
    msg = str(e.value)
    assert "150 s" in msg and "score (job 101): 2/2 rank(s) incomplete" in msg and "RUNNING x1" in msg
    assert "left running" in msg and clock.sleeps == [60, 60, 30]


def test_wait_ended_without_completions_raises_after_settling():
    """COMPLETED in sacct but a rank without its marker: given settle_s (shared-filesystem lag), then raise."""
    clock = Clock()
    with pytest.raises(SlurmJobError, match=r"slurm job 5 has ended \(COMPLETED x2\) but 1/2 rank\(s\)"):
        wait_for_slurm([_pass("score", "5", [1])], lambda ids: {"5": {"5_0": "COMPLETED", "5_1": "COMPLETED"}},
                       poll_s=60, settle_s=120, sleep=clock.sleep, clock=clock)
    assert clock.t == 120


def test_wait_unknown_state_and_unsubmitted_pass():
    clock = Clock()  # no answer from slurm: only the markers and the timeout count
    with pytest.raises(TimeoutError):
        wait_for_slurm([_pass("score", "5", [1])], lambda ids: None, poll_s=10, timeout_s=20, settle_s=0,
                       sleep=clock.sleep, clock=clock)
    with pytest.raises(SlurmJobError, match="no slurm job was submitted"):
        wait_for_slurm([_pass("score", None, [1])], None, poll_s=10, sleep=clock.sleep, clock=clock)


def test_slurm_job_states_reads_sacct_else_squeue(tmp_path, monkeypatch):
    bin_ = tmp_path / "bin"
    bin_.mkdir()

    def tool(name, body):
        (bin_ / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_ / name).chmod(0o755)

    monkeypatch.setenv("PATH", str(bin_))
    assert slurm_job_states(["101"]) is None  # neither tool
    tool("sacct", "printf '101_0|COMPLETED\\n101_1|CANCELLED by 1000\\n101_[2-3]|PENDING\\n99_1|FAILED\\n'")
    tool("squeue", "printf '103_[0-1]|PENDING\\n'")
    assert slurm_job_states(["101", "103"]) == {
        "101": {"101_0": "COMPLETED", "101_1": "CANCELLED", "101_[2-3]": "PENDING"}}
    tool("sacct", "echo 'sacct: error: Slurm accounting storage is disabled' >&2; exit 1")
    assert slurm_job_states(["101", "103"]) == {"101": {"101": "ENDED"}, "103": {"103_[0-1]": "PENDING"}}


# ------------------------------------------------------------------------------------------------------ ray

def test_ray_missing_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails as if not installed
    with pytest.raises(ImportError) as e:
        make_executor(DataConfig(executor="ray"), [], str(tmp_path / "logs"), "x")
    assert RAY_INSTALL in str(e.value)


def test_ray_chain_runs_on_a_local_instance(tmp_path):
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        data = DataConfig(executor="ray", tasks=2, ray=RayConfig(mem_per_cpu_gb=1))
        first = make_executor(data, _copy(_inputs(tmp_path), tmp_path / "mid"), str(tmp_path / "logs1"), "c1")
        second = make_executor(data, _copy(tmp_path / "mid", tmp_path / "out"), str(tmp_path / "logs2"), "c2",
                               depends=first)
        assert type(first).__name__ == "RayPipelineExecutor" and first.cpus_per_task == 1
        run_passes([first, second])
    finally:
        ray.shutdown()
    assert _completions(tmp_path / "logs2") == ["00000", "00001"]
    assert len(_docs(tmp_path / "out")) == 6


def test_run_passes_stops_at_a_pass_left_incomplete(tmp_path, monkeypatch):
    """Ray's executor only logs a warning when tasks fail; run_passes raises before the next pass starts."""
    data = DataConfig(executor="local", tasks=2)
    first = make_executor(data, [], str(tmp_path / "logs1"), "p1")
    second = make_executor(data, [], str(tmp_path / "logs2"), "p2", depends=first)
    monkeypatch.setattr(InProcessExecutor, "run", lambda self: None)
    with pytest.raises(RuntimeError, match=r"2/2 rank\(s\) did not complete \(ranks \[0, 1\]\)"):
        run_passes([first, second])
