"""Data parallelism for `train()`: process group, each rank's rows of a global batch, DDP / FSDP2 wrapping.

Launch with torchrun (`torchrun --nproc_per_node N -m safepretrain ...`): it sets RANK, WORLD_SIZE, LOCAL_RANK
and MASTER_ADDR/PORT, read here through `env://`. Without torchrun a `ddp`/`fsdp2` config runs as a world of
one, so the same config works on a laptop.

The update of a step equals the one-process update of the same global batch: every rank builds the whole
batch (`source.batch(step)` is a pure function of the step), trains on its contiguous block of rows, and
weights each micro-batch's loss by its share of the global batch's target tokens (see `train.forward_backward`).
DDP and FSDP2 average gradients over ranks, so those weights are multiplied by the world size.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel

from safepretrain.utils import StepMarker


@dataclass(frozen=True)
class DistContext:
    mode: str = "none"  # none | ddp | fsdp2
    rank: int = 0
    world: int = 1
    owns_group: bool = False  # this process started the group, so it also ends it

    @property
    def is_main(self) -> bool:
        """Rank 0 writes logs, metrics and the JSON parts of checkpoints."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.mode != "none"


def rank_device(name: str) -> torch.device:
    """The device of this rank: under torchrun on CUDA, `cuda:LOCAL_RANK` (one GPU per process)."""
    if name in ("auto", "cuda") and torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
        return device
    return torch.device("cpu" if name == "auto" else name)


def setup(mode: str, device: torch.device) -> DistContext:
    """Join (or start) the process group for `mode`; a no-op context for `none`."""
    if mode == "none":
        return DistContext()
    owns = False
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if "WORLD_SIZE" in os.environ and "RANK" in os.environ:
            dist.init_process_group(backend, device_id=device if device.type == "cuda" else None)
        else:  # not under torchrun: a world of one, no ports needed
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
        owns = True
    return DistContext(mode, dist.get_rank(), dist.get_world_size(), owns)


def teardown(ctx: DistContext) -> None:
    if ctx.owns_group and dist.is_initialized():
        # every rank reaches the same point before any tears its sockets down: a rank that destroys the group while
        # a peer's gloo threads still talk to it can abort the peer at exit (seen once in CI: SIGABRT, "terminate
        # called without an active exception")
        if dist.get_world_size() > 1:
            dist.barrier()
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    if ctx.active and ctx.world > 1:
        dist.barrier()


def rank_rows(t: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """This rank's contiguous block of rows: the global batch is the same for every world size."""
    if ctx.world == 1:
        return t
    n = t.shape[0] // ctx.world
    return t[ctx.rank * n:(ctx.rank + 1) * n]


def wrap(model: torch.nn.Module, ctx: DistContext, device: torch.device) -> torch.nn.Module:
    """DDP: replicate (gradients all-reduced in buckets during backward). FSDP2: shard every block and the
    root (embedding, final norm, tied head); a block's weights are gathered only while it runs."""
    if ctx.mode == "ddp":

        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if ctx.mode == "fsdp2":

        for block in model.blocks:
            fully_shard(block)
        fully_shard(model)
    return model


@contextlib.contextmanager
def grad_sync(model: torch.nn.Module, ctx: DistContext, last: bool):
    """Communicate gradients only on the last micro-batch of a step: the earlier ones just accumulate."""
    if ctx.mode == "ddp" and not last:
        with model.no_sync():
            yield
        return
    if ctx.mode == "fsdp2":
        model.set_requires_gradient_sync(last)
    yield


def all_reduce_sum(t: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Sum over ranks (for the logged loss; the gradients are reduced by DDP/FSDP2 themselves)."""
    if ctx.active and ctx.world > 1:
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def clip_grad_norm(model: torch.nn.Module, max_norm: float, ctx: DistContext) -> torch.Tensor:
    """Global gradient norm (clipped to `max_norm`). FSDP2 gradients are sharded DTensors: their norm is
    a partial sum per rank, made whole by `full_tensor()` before the clip coefficient is applied."""
    params = [p for p in model.parameters() if p.grad is not None]
    if ctx.mode != "fsdp2":
        return torch.nn.utils.clip_grad_norm_(params, max_norm)

    total = torch.nn.utils.get_total_norm([p.grad for p in params])
    if isinstance(total, DTensor):
        total = total.full_tensor()
    torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)
    return total


# ---- the study under torchrun: rank 0 orchestrates, every rank trains ------------------------------------------
# `safepretrain study` under torchrun starts one process group for the whole study (`start_study_group`). Rank 0
# alone runs the data stage, writes step markers, copies trunk checkpoints, evaluates and reports; every rank
# calls `train()` (whose ranks join that group). Decisions that only rank 0 may take (is this step done?) are
# broadcast, so all ranks walk the same steps; the timeout is long because ranks 1..N wait in a collective while
# rank 0 evaluates alone.


class RankFailure(RuntimeError):
    """Rank 0 failed inside a rank-0-only step; raised on the other ranks so they stop too."""


def start_study_group(timeout_minutes: float, device_name: str) -> int:
    """Join torchrun's process group for a study (a no-op without torchrun); returns the world size. CPU
    collectives (barriers, broadcast of decisions) go over gloo, CUDA tensors over nccl."""

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1 or dist.is_initialized():
        return world
    device = rank_device(device_name)
    backend = "cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, timeout=datetime.timedelta(minutes=timeout_minutes),
                            device_id=device if device.type == "cuda" else None)
    return dist.get_world_size()


def end_study_group() -> None:
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def study_world() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main_process() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def on_main(fn, *args, **kwargs):
    """Run `fn` on rank 0 only and hand its (picklable) result to every rank; a failure on rank 0 is raised
    on every rank. Without a multi-rank group this is just `fn(*args, **kwargs)`."""
    return _rank0_runs(fn, args, kwargs, share=True)


def main_first(fn, *args, **kwargs):
    """Rank 0 runs `fn`, which builds something and returns it; then the other ranks run `fn` too and find it
    built (the data stage: rank 0 writes it, the others load it). The result itself is not sent."""
    result = _rank0_runs(fn, args, kwargs, share=False)
    return result if is_main_process() else fn(*args, **kwargs)


def rank_zero_only(fn):
    """Decorate a function that writes the run directory: under a multi-rank study rank 0 alone runs it and every
    rank gets its (picklable) result (`on_main`)."""
    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        return on_main(fn, *args, **kwargs)
    return wrapped


def rank_zero_first(fn):
    """Decorate a step that builds something every rank then loads: rank 0 builds it, then the others run the step
    and find it built (`main_first`)."""
    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        return main_first(fn, *args, **kwargs)
    return wrapped


class SharedStepMarker(StepMarker):
    """A `StepMarker` that every rank of a study walks: rank 0 alone reads and writes the marker, and every rank
    gets its decision, so the training stages carry no rank checks of their own. Alone, it is a StepMarker."""

    def is_done(self) -> bool:
        return on_main(super().is_done)

    def start(self) -> None:
        on_main(super().start)

    def finish(self, outputs=(), **info) -> None:
        on_main(super().finish, list(outputs), **info)

    def info(self) -> dict:
        return on_main(super().info)


def _rank0_runs(fn, args, kwargs, share: bool):
    if study_world() == 1:
        return fn(*args, **kwargs)
    box, result = [None], None
    if dist.get_rank() == 0:
        try:
            result = fn(*args, **kwargs)
        except BaseException as err:
            dist.broadcast_object_list([("error", f"{type(err).__name__}: {err}")], src=0)
            raise
        box[0] = ("ok", result if share else None)
    dist.broadcast_object_list(box, src=0)
    status, value = box[0]
    if status == "error":
        raise RankFailure(f"rank 0 failed in {getattr(fn, '__qualname__', fn)}: {value}")
    return result if dist.get_rank() == 0 else value
