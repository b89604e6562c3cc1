"""datatrove executors of the data stage: `data.executor: local | slurm | ray`.

A data stage is a chain of passes (one datatrove pipeline each, each pass reading what the previous one wrote).
`make_executor` builds one pass's executor from `DataConfig`; `run_passes` runs a chain of them and returns when
every rank of every pass is complete, or raises.

- local: `InProcessExecutor`, in this process (`workers=1`) or a pool of workers that die with it.
- slurm: one sbatch job array per pass; pass k+1 is submitted with `--dependency=afterok:<job of pass k>`
  (datatrove's `depends`), all at once. `wait_for_slurm` then polls the passes' `completions/` folders and the
  jobs' states (`sacct`, else `squeue`), and raises as soon as a job fails, naming the job and its log folder.
- ray: `RayPipelineExecutor` on the cluster at `data.ray.address` (`pip install 'safepretrain[cluster]'`).
"""

from __future__ import annotations

import ctypes
import getpass
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from copy import deepcopy
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import multiprocess
from datatrove.executor.local import LocalPipelineExecutor
from datatrove.executor.slurm import SlurmPipelineExecutor
from datatrove.utils.stats import PipelineStats

from safepretrain.utils import log

if TYPE_CHECKING:
    from datatrove.executor.base import PipelineExecutor

    from safepretrain.config import DataConfig

RAY_INSTALL = "pip install 'safepretrain[cluster]'"


def _die_with_parent(parent_pid: int, threads: int | None = None) -> None:
    """Pool initializer: the kernel kills this worker when the study process dies (Linux PR_SET_PDEATHSIG),
    so a `kill -9` of the study leaves no worker running on alone. `threads`: this worker's share of the
    cores for torch, BLAS and tokenizers (set before they load): each library otherwise takes every core,
    and two workers on two cores ran the data stage 2x slower than one (benchmarks/data_workers.py)."""

    if threads:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "RAYON_NUM_THREADS"):
            os.environ[var] = str(threads)
        if "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(threads)

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: workers then end when they next find the pipe closed
        pass
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


class InProcessExecutor(LocalPipelineExecutor):
    """LocalPipelineExecutor whose ranks leave nothing behind when the study is killed.

    datatrove's executor always starts a multiprocess Manager server; a `kill -9` of the study left it
    orphaned (~600 MB) with a /tmp/pymp-* folder, and with `workers > 1` its Pool workers ran on too.
    Here `workers=1` runs the ranks in this process, and `workers > 1` runs them in a Pool of workers
    that die with the study (`_die_with_parent`); neither needs a Manager.

    `depends`: the previous pass; it is run first if it has not been, and an incomplete one raises (it ran in
    this process, so there is nothing to wait for)."""

    def run(self):
        if self.depends is not None:
            if not self.depends._launched:
                self.depends.run()
            if missing := self.depends.get_incomplete_ranks(skip_completed=True):
                raise RuntimeError(f"the pass this one depends on ({self.depends.logging_dir.path}) has "
                                   f"{len(missing)} incomplete rank(s) {missing[:10]}; see its logs/ folder")
        self._launched = True
        ranks = self.get_incomplete_ranks(range(self.local_rank_offset, self.local_rank_offset + self.local_tasks))
        if not ranks:
            return
        self.save_executor_as_json()
        if self.workers == 1:
            pipeline = self.pipeline
            for rank in ranks:
                self.pipeline = deepcopy(pipeline)
                self._run_for_rank(rank, 0)
            self.pipeline = pipeline
            return

        ctx = multiprocess.get_context(self.start_method)
        workers = min(self.workers, len(ranks)) if self.workers > 0 else len(ranks)
        threads = max(1, (os.cpu_count() or 1) // workers)
        with ctx.Pool(workers, initializer=_die_with_parent, initargs=(os.getpid(), threads)) as pool:
            # local rank 0 (the one datatrove lets log to the console) goes to the first rank only
            list(pool.imap_unordered(self._run_rank_star, [(r, int(i > 0)) for i, r in enumerate(ranks)]))

    def _run_rank_star(self, rank_and_local: tuple[int, int]):
        return self._run_for_rank(*rank_and_local)


def merge_rank_stats(logging_dir: Path) -> dict:
    """`stats.json` = the sum of every finished rank's stats, so a resumed stage counts all documents, not
    only those of its last invocation (datatrove writes the sum of the ranks run by one invocation)."""

    total = sum((PipelineStats.from_json(json.loads(p.read_text()))
                 for p in sorted((logging_dir / "stats").glob("*.json"))), start=PipelineStats())
    with open(logging_dir / "stats.json", "w") as f:
        total.save_to_disk(f)
    return json.loads((logging_dir / "stats.json").read_text())


def make_executor(data: DataConfig, pipeline: list, logging_dir: str, job_name: str, depends=None,
                  tasks: int | None = None, gpus: int = 0) -> PipelineExecutor:
    """The datatrove executor of one pass: `tasks` ranks (default `data.tasks`) of `pipeline`, logging (and
    marking completed ranks) in `logging_dir`. `depends` = the previous pass's executor (same kind). `gpus`:
    GPUs per task (slurm, ray; the local executor uses whatever the machine has)."""
    tasks = data.tasks if tasks is None else tasks
    logging_dir = str(logging_dir)
    if data.executor == "local":
        return InProcessExecutor(pipeline, tasks=tasks, workers=data.workers, logging_dir=logging_dir,
                                 start_method="spawn", depends=depends)
    if data.executor == "slurm":
        s = data.slurm
        # workers=-1: no `%N` throttle on the array (data.workers is the local pool size); slurm schedules
        return SlurmPipelineExecutor(
            pipeline, tasks=tasks, time=s.time, partition=s.partition, cpus_per_task=s.cpus_per_task,
            mem_per_cpu_gb=s.mem_per_cpu_gb, gpus_per_task=gpus, workers=-1, job_name=job_name, qos=s.qos,
            env_command=s.env_command, sbatch_args=dict(s.sbatch_args), depends=depends, logging_dir=logging_dir,
            # slurm writes its logs to a local path: <logging_dir>/slurm_logs, or datatrove's default for a remote
            # logging_dir (./slurm_logs/<job_name>/<timestamp>)
            slurm_logs_folder=None if "://" in logging_dir else os.path.join(os.path.abspath(logging_dir),
                                                                               "slurm_logs"))
    if data.executor == "ray":
        try:  # the `ray` extra: imported only when this executor is chosen
            import ray  # noqa: PLC0415
        except ImportError as e:
            raise ImportError(f"data.executor: ray needs the ray package: {RAY_INSTALL}") from e
        from datatrove.executor.ray import RayPipelineExecutor  # noqa: PLC0415  (needs ray)

        if not ray.is_initialized():  # datatrove expects a connected Ray; null address = local or RAY_ADDRESS
            ray.init(address=data.ray.address)
        # workers=-1: every task is submitted, Ray runs as many as the cluster's CPUs (cpus_per_task) allow
        return RayPipelineExecutor(pipeline, tasks=tasks, workers=-1, depends=depends, logging_dir=logging_dir,
                                   cpus_per_task=data.ray.cpus_per_task, mem_per_cpu_gb=data.ray.mem_per_cpu_gb,
                                   gpus_per_task=gpus)
    raise ValueError(f"data.executor={data.executor!r}; use local, slurm or ray")


# ---------------------------------------------------------------------------------------------------- slurm

FAILED_STATES = frozenset({"FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE", "REVOKED"})
"""A task of the array in one of these states will not write its completion marker: raise at once."""
ENDED_STATES = FAILED_STATES | {"COMPLETED", "PREEMPTED", "NODE_FAIL", "ENDED"}
"""Not running and not waiting to run (PREEMPTED / NODE_FAIL may still be requeued: see `settle_s`). `ENDED`:
gone from `squeue`."""

JobStates = Callable[[list[str]], "dict[str, dict[str, str]] | None"]
"""job ids → {job id: {array element ("123_4", "123_[5-9]"): state}}; a job it does not know is left out
(unknown); None = no answer this time."""


class SlurmJobError(RuntimeError):
    """A slurm job of the data stage failed, or ended without completing its ranks."""


@dataclass
class SlurmPass:
    """What `wait_for_slurm` watches of one submitted pass."""

    name: str
    job_id: str | None
    """The array's job id; None = nothing was submitted (every rank was already complete)."""
    slurm_logs: str
    tasks: int
    incomplete: Callable[[], list[int]]
    """Ranks without a completion marker (`<logging_dir>/completions/<rank>`)."""

    @classmethod
    def of(cls, executor: SlurmPipelineExecutor) -> SlurmPass:
        job_id = executor.job_id
        return cls(executor.job_name, None if job_id in (None, -1, "-1") else str(job_id),
                   str(executor.slurm_logs_folder), executor.world_size,
                   lambda: executor.get_incomplete_ranks(skip_completed=True))


def _run_quiet(cmd: list[str]) -> str | None:
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout if r.returncode == 0 else None


def _parse_states(text: str, job_ids: list[str]) -> dict[str, dict[str, str]]:
    wanted, states = set(job_ids), {}
    for line in text.splitlines():
        element, _, state = line.strip().partition("|")
        base = re.split(r"[_+.]", element, maxsplit=1)[0]
        if base in wanted and state.strip():
            states.setdefault(base, {})[element] = state.split()[0]  # "CANCELLED by 123" -> CANCELLED
    return states


def slurm_job_states(job_ids: list[str]) -> dict[str, dict[str, str]] | None:
    """States of the jobs' array elements from `sacct` (which keeps finished jobs), else from `squeue` (where
    a job that is gone has ended: `ENDED`); None when neither answers (no slurm here, or it timed out)."""
    if not job_ids:
        return {}
    out = _run_quiet(["sacct", "-X", "-n", "-P", "-j", ",".join(job_ids), "-o", "JobID,State"])
    if out is not None:
        return _parse_states(out, job_ids)
    out = _run_quiet(["squeue", "-h", "-u", getpass.getuser(), "-o", "%i|%T"])
    if out is not None:
        states = _parse_states(out, job_ids)
        return {j: states.get(j) or {j: "ENDED"} for j in job_ids}
    return None


def _summary(elements: dict[str, str] | None) -> str:
    if not elements:
        return "state unknown"
    return ", ".join(f"{s} x{n}" for s, n in sorted(Counter(elements.values()).items()))


def wait_for_slurm(passes: list[SlurmPass], job_states: JobStates | None = slurm_job_states, *,
                   poll_s: float = 60.0, timeout_s: float | None = None, settle_s: float = 120.0,
                   sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic) -> None:
    """Return when every rank of every pass has its completion marker.

    Each poll reads the jobs' states first, then the completion markers. Raises `SlurmJobError` when a task of
    a pass is FAILED / CANCELLED / TIMEOUT / OUT_OF_MEMORY / ..., or when a pass's job has ended but ranks
    stayed incomplete for `settle_s` (a requeue, or markers not yet visible on a shared filesystem, get that
    long); `TimeoutError` after `timeout_s` (None = no limit). The jobs are left as they are."""
    deadline = None if timeout_s is None else clock() + timeout_s
    ended_since: dict[int, float] = {}
    last_progress = None
    while True:
        ids = [p.job_id for p in passes if p.job_id]
        states = (job_states(ids) if ids else {}) if job_states else None
        states = states or {}
        for i, p in enumerate(passes):
            failed = {e: s for e, s in states.get(p.job_id or "", {}).items() if s in FAILED_STATES}
            if failed:
                later = [q.job_id for q in passes[i + 1:] if q.job_id]
                raise SlurmJobError(
                    f"data pass {p.name!r}: slurm job {p.job_id} failed ({_summary(failed)}: "
                    f"{', '.join(sorted(failed)[:10])}); see its logs in {p.slurm_logs} (<job>_<task>.out)"
                    + (f"; the later passes' jobs {', '.join(later)} depend on it and will not start "
                       f"(scancel {' '.join(later)})" if later else ""))
        incomplete = [p.incomplete() for p in passes]
        if not any(incomplete):
            return
        now = clock()
        for i, (p, missing) in enumerate(zip(passes, incomplete)):
            elements = states.get(p.job_id or "")
            if not missing or (p.job_id and not (elements and all(s in ENDED_STATES for s in elements.values()))):
                ended_since.pop(i, None)
                continue
            since = ended_since.setdefault(i, now)
            if p.job_id is None or now - since >= settle_s:
                what = (f"slurm job {p.job_id} has ended ({_summary(elements)})" if p.job_id
                        else "no slurm job was submitted")
                raise SlurmJobError(f"data pass {p.name!r}: {what} but {len(missing)}/{p.tasks} rank(s) have no "
                                    f"completion marker (ranks {missing[:10]}); see the logs in {p.slurm_logs}")
        progress = [(p.name, p.job_id, len(m), _summary(states.get(p.job_id or "")))
                    for p, m in zip(passes, incomplete)]
        if progress != last_progress:
            log.info("data: waiting for slurm: " + "; ".join(f"{n} (job {j}) {m} rank(s) to go, {s}"
                                                            for n, j, m, s in progress))
            last_progress = progress
        if deadline is not None and now >= deadline:
            raise TimeoutError(
                f"gave up after {timeout_s:g} s waiting for the slurm data passes: "
                + "; ".join(f"{n} (job {j}): {m}/{p.tasks} rank(s) incomplete, {s}"
                            for (n, j, m, s), p in zip(progress, passes))
                + f". The jobs were left running; their logs are in {passes[-1].slurm_logs} and the other passes'"
                  " slurm_logs folders")
        sleep(poll_s if deadline is None else max(0.0, min(poll_s, deadline - now)))


def submit_slurm(executors: list[SlurmPipelineExecutor]) -> list[SlurmPass]:
    """Submit the chain: each pass without `depends` gets the previous one, then datatrove submits the last
    pass's dependencies first (`launch_job`), each with `--dependency=afterok:<previous pass's job>`. A pass
    whose ranks are all complete is not submitted (job id -1) and gives no dependency.

    `launch_job` rather than `run()`: `run()` inside a slurm array task (SLURM_ARRAY_TASK_ID set) would run a
    rank instead of submitting."""
    for prev, ex in zip(executors, executors[1:]):
        if ex.depends is None and ex.depends_job_id is None and ex.job_id is None:
            ex.depends = prev
    executors[-1].launch_job()
    if unsent := [ex.job_name for ex in executors if ex.job_id is None]:
        raise SlurmJobError(f"passes {unsent} were not submitted: they are not in the `depends` chain of the "
                            f"last pass {executors[-1].job_name!r}")
    return [SlurmPass.of(ex) for ex in executors]


def run_passes(executors: list, *, poll_s: float = 60.0, timeout_s: float | None = None,
               job_states: JobStates | None = slurm_job_states) -> None:
    """Run a chain of passes (executors of one kind, from `make_executor`) and return when all are complete.

    local and ray: each pass in turn (`run()` blocks until its ranks are done); a pass left with incomplete
    ranks raises before the next starts (Ray's executor only logs a warning). slurm: `submit_slurm`, then
    `wait_for_slurm(poll_s, timeout_s)`. `timeout_s` bounds the slurm wait only."""
    if not executors:
        return
    if len({type(ex) for ex in executors}) > 1:
        raise ValueError(f"passes of different executor kinds: {[type(ex).__name__ for ex in executors]}")
    if isinstance(executors[0], SlurmPipelineExecutor):
        wait_for_slurm(submit_slurm(executors), job_states, poll_s=poll_s, timeout_s=timeout_s)
        return
    for ex in executors:
        ex.run()
        if missing := ex.get_incomplete_ranks(skip_completed=True):
            raise RuntimeError(f"data pass in {ex.logging_dir.path}: {len(missing)}/{ex.world_size} rank(s) did "
                               f"not complete (ranks {missing[:10]}); see {ex.logging_dir.path}/logs")
