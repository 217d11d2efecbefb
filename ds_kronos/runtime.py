"""Process-level set-up and tear-down: distributed init through DeepSpeed, device, threads, seeds, and the one-line
translation of the failures a process group brings (a rank that stops answering, device memory) for every job."""

from __future__ import annotations

import datetime
import os
import random
import socket
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ds_kronos import shm_buffers
from ds_kronos.config import DEFAULT_DIST_TIMEOUT_S
from ds_kronos.errors import Terminated, UserError


@dataclass(frozen=True)
class Runtime:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    local_world_size: int = 1
    """Ranks on this node (the launcher's LOCAL_WORLD_SIZE): fewer than ``world_size`` on a multi-node run."""

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def on_cpu(self) -> bool:
        return self.device.type == "cpu"

    def close(self) -> None:
        """Collective: leave the process group once every rank is done. The ranks wait for each other first: a rank
        leaving while rank 0 still uses the group intermittently aborts the process ("terminate called without an
        active exception")."""
        global _host_group
        barrier()
        torch.distributed.destroy_process_group()  # every group, the host group included
        _host_group = None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def slurm_rendezvous(environ: dict[str, str]) -> dict[str, str]:
    """torch.distributed variables for a process started directly by srun (``deepspeed --launcher slurm``).

    srun sets only SLURM_* variables; DeepSpeed's slurm runner exports MASTER_ADDR/MASTER_PORT. Empty when this
    is not such a process (or when RANK is already set, e.g. by the deepspeed or torchrun launcher).
    """
    if "RANK" in environ or "SLURM_PROCID" not in environ or "MASTER_ADDR" not in environ:
        return {}
    per_node = environ.get("SLURM_NTASKS_PER_NODE") or environ.get("SLURM_TASKS_PER_NODE", "1")
    per_node = per_node.split("(")[0].split(",")[0]  # "8(x2)" -> "8"
    return {"RANK": environ["SLURM_PROCID"], "WORLD_SIZE": environ.get("SLURM_NTASKS", "1"),
            "LOCAL_RANK": environ.get("SLURM_LOCALID", "0"), "LOCAL_WORLD_SIZE": per_node,
            "MASTER_PORT": environ.get("MASTER_PORT", "29500")}


def hide_deepspeed_collective_deprecations() -> None:
    """torch 2.13 deprecates the collectives DeepSpeed 0.19's comm calls for ZeRO (all_gather_into_tensor after each
    step, reduce_scatter_tensor on GPUs): a FutureWarning for DeepSpeed to act on, not a user, so exactly these two
    are hidden."""
    for name in ("all_gather_into_tensor", "reduce_scatter_tensor"):
        warnings.filterwarnings("ignore", rf"`torch\.distributed\.{name}` is deprecated", FutureWarning)


def init_runtime(threads: int | None = None, timeout_s: float = DEFAULT_DIST_TIMEOUT_S) -> Runtime:
    """Initialise torch.distributed through ``deepspeed.init_distributed`` (gloo/shm on CPU, NCCL on GPU).

    Works under the deepspeed launcher (also with ``--launcher slurm``), torchrun, or as a plain single process
    (then a 1-process group on a free local port is created, so the same code path runs everywhere).
    """
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    hide_deepspeed_collective_deprecations()
    os.environ.update(slurm_rendezvous(dict(os.environ)))
    if "RANK" not in os.environ and "OMPI_COMM_WORLD_RANK" not in os.environ:
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1",
                          MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    accelerator = get_accelerator()
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("LOCAL_SIZE", "1")))
    if accelerator.device_name() == "cpu":
        # Several ranks share the cores: oversubscribing threads makes every rank slower.
        torch.set_num_threads(threads or max(1, (os.cpu_count() or 1) // max(1, local_world)))
    elif threads:
        torch.set_num_threads(threads)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if local_rank == 0:
        shm_buffers.sweep_stale_buffers()  # left by jobs on this machine that were killed before releasing them
    timeout = datetime.timedelta(seconds=timeout_s)
    # DeepSpeed creates its data-parallel groups with new_group(ranks), which takes torch's default timeout (30 min
    # for gloo, 10 for NCCL), not the world group's: make the default ours, so ZeRO's collectives time out too.
    import torch.distributed.distributed_c10d as c10d
    c10d.default_pg_timeout = timeout
    if isinstance(getattr(c10d, "default_pg_nccl_timeout", None), datetime.timedelta):
        c10d.default_pg_nccl_timeout = timeout
    deepspeed.init_distributed(timeout=timeout)
    import deepspeed.comm as dist

    rank, world = dist.get_rank(), dist.get_world_size()
    # init_distributed returns once this rank has mapped every rank's shm buffer; after the barrier all have, so
    # the names can go: the memory is freed by the kernel when the last rank exits, even by kill -9.
    dist.barrier()
    shm_buffers.release_own_buffer(rank)
    if accelerator.device_name() == "cpu":
        device = torch.device("cpu")
    else:
        accelerator.set_device(local_rank)
        device = torch.device(accelerator.device_name(local_rank))
    return Runtime(rank, local_rank, world, device, local_world)


def rank_seed(seed: int, rank: int, step: int = 0) -> int:
    """A seed for one rank's random streams (dropout, sampled s1), distinct per (seed, step, global rank).

    Every rank builds a preset with ``seed`` itself (identical initial weights); after that each draws its own
    numbers, as upstream's seed + rank does. ``step`` is the optimizer step a stream starts at: 0 for a new run,
    the resumed step for ranks that have no saved stream of their own (a run resumed on another world size)."""
    return stream_seed(seed, step, rank)


def stream_seed(*keys: int) -> int:
    """A 63-bit seed for the random stream named by ``keys`` (numpy's SeedSequence: independent streams for
    distinct keys, unlike seed + offset arithmetic)."""
    return int(np.random.SeedSequence(list(keys)).generate_state(1, dtype=np.uint64)[0] >> 1)


def all_reduce_max(value: int, device: torch.device) -> int:
    import deepspeed.comm as dist
    tensor = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return int(tensor.item())


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (plain Python data this process made, never a file's contents), in rank order."""
    import deepspeed.comm as dist
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


_ABORTED = "\0aborted"


def outcome_on_main(key: str, work: Callable[[], str | None], runtime: Runtime, wait_s: float,
                    what: str) -> str | None:
    """Rank 0 runs ``work`` (None when it succeeded, else a one-line problem); every rank returns that outcome.

    For work that may outlast ``--dist_timeout`` (a checkpoint conversion): the other ranks do not wait in a
    collective, which that timeout bounds, but on the process group's store with a limit of their own, ``wait_s``.
    The store lives in rank 0's process, so a rank 0 that dies ends the wait at once. ``key`` names the outcome
    within the job (the store is the job's own); ``what`` says in the error lines what rank 0 was doing."""
    if runtime.world_size == 1:
        return work()
    import torch.distributed as tdist

    store = tdist.distributed_c10d._get_default_store()
    name = f"ds_kronos/outcome/{key}"
    if runtime.is_main:
        try:
            problem = work()
        except BaseException:
            store.set(name, _ABORTED)  # the other ranks stop waiting; this rank reports its own error
            raise
        store.set(name, problem or "")
        return problem
    try:
        store.wait([name], datetime.timedelta(seconds=wait_s))
        value = store.get(name).decode("utf-8", errors="replace")
    except RuntimeError as exc:
        timed_out = "timeout" in str(exc).lower() or "timed out" in str(exc).lower()
        raise UserError(f"rank 0 did not finish {what} within {wait_s:g} s" if timed_out else
                        f"rank 0 stopped answering while {what}", rank_specific=True) from None
    if value == _ABORTED:
        raise UserError(f"rank 0 failed while {what} (see its error)")
    return value or None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def barrier() -> None:
    import deepspeed.comm as dist
    dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    import deepspeed.comm as dist
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


_host_group: Any = None


def host_all_reduce_sum(values: list[float]) -> list[float]:
    """Sum a few host-side numbers over every rank without involving the accelerator: on a GPU the world group is
    NCCL's, and reading its result back would wait for every kernel queued so far, so a gloo group over the same
    ranks (created on first use, which every rank reaches at the same point) carries them instead. For a flag the
    ranks must agree on at each step (a preemption signal) at the cost of a small message, not a device sync.
    Collective."""
    import torch.distributed as dist

    global _host_group
    if _host_group is None:
        _host_group = dist.group.WORLD if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")
    tensor = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=_host_group)
    return tensor.tolist()


def is_collective_timeout(exc: BaseException) -> bool:
    """A collective that waited longer than the process group's timeout (gloo's wording; NCCL's watchdog ends the
    process itself)."""
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("Timed out" in text or "timed out" in text or "Timeout" in text)


def unresponsive_ranks(world_size: int, rank: int, settle_s: float = 3.0) -> list[int] | None:
    """After a collective timed out: the ranks that did not check in as waiting too, through the rendezvous store
    (every rank that timed out calls this). None when the store itself does not answer (it lives in rank 0)."""
    import torch.distributed as tdist

    try:
        store = tdist.distributed_c10d._get_default_store()
        store.set_timeout(datetime.timedelta(seconds=settle_s + 5))
        store.set(f"ds_kronos/waiting/{rank}", "1")
        time.sleep(settle_s)  # the other waiting ranks time out within moments of each other
        return [r for r in range(world_size) if not store.check([f"ds_kronos/waiting/{r}"])]
    except Exception:  # noqa: BLE001 - any store failure means: we cannot tell
        return None


def stalled_rank_message(timeout_s: float) -> str:
    """After a collective timed out on this rank: which rank(s) stopped answering."""
    import torch.distributed as tdist

    rank, world = tdist.get_rank(), tdist.get_world_size()
    missing = unresponsive_ranks(world, rank)
    who = (f"rank {', '.join(map(str, missing))}" if missing else
           "another rank (which one could not be told: rank 0, which holds the rendezvous store, did not answer)")
    return (f"{who} stopped answering: a collective waited more than --dist_timeout {timeout_s:g} s, so the job "
            f"stops (look at that process: stopped, hung, swapping or out of memory)")


def is_peer_gone(exc: BaseException) -> bool:
    """A collective that failed because another rank's process ended (gloo's wording)."""
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("Connection closed by peer" in text or "Connection reset by peer" in text)


@contextmanager
def distributed_failures(timeout_s: float,
                         signals_received: Callable[[], Sequence[int]] = tuple) -> Iterator[None]:
    """Every job that joins a process group runs inside this: a collective that timed out becomes the one line
    naming the rank that stopped answering, and running out of GPU memory becomes a sizing hint (both
    :class:`UserError`, printed by this rank, since only it knows).

    ``signals_received``: the termination signals this process caught so far (the job's preemption listener). A
    rank that was stopped (SIGSTOP, swapped out) and continued only to be sent the launcher's SIGTERM finds its
    collective timed out too; it must not claim that another rank stopped answering, so it ends as
    :class:`Terminated` instead."""
    try:
        yield
    except torch.cuda.OutOfMemoryError as exc:  # a user-fixable sizing problem
        raise UserError(f"out of GPU memory: {str(exc).splitlines()[0]} (lower --batch_size, use ZeRO-3, "
                        f"offload or --activation_checkpointing; see launch/plan.py)", rank_specific=True) from None
    except RuntimeError as exc:
        timed_out = is_collective_timeout(exc)
        received = signals_received()
        if received and (timed_out or is_peer_gone(exc)):
            raise Terminated(received[0]) from None
        if not timed_out:
            raise
        raise UserError(stalled_rank_message(timeout_s), rank_specific=True) from None
