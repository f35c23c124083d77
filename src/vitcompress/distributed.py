"""Data-parallel searches across ``torchrun`` processes (one or several machines).

Evol-Q's fitness, F-LBQ's curve measurement and MixA-Q's candidate evaluation are sums over images or
independent units. Under ``torchrun`` every process (rank) runs the same search; each does its share of
the work (:func:`shard`) and the shares are combined with :func:`gather_values`, so every rank holds the
same numbers, bit for bit the ones one process computes, and takes the same decisions. Only rank 0
writes files (:func:`is_main`); what rank 0 reads from disk reaches the others with
:func:`main_decides`.

Nothing happens without the ``torchrun`` environment (``WORLD_SIZE`` unset or 1): every function then
answers for one process and no process group is created. :func:`init_from_env` creates the group from
``torchrun``'s variables (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``)
with the backends ``cpu:gloo,cuda:nccl`` when CUDA is present (``gloo`` alone otherwise): CPU tensors go
through gloo, CUDA tensors through NCCL, and each process's ``cuda`` is its ``LOCAL_RANK``-th GPU.
The numbers exchanged here are a few floats per evaluation; they travel as CPU float64 tensors.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from vitcompress import errors

log = logging.getLogger(__name__)
T = TypeVar("T")


def _env_world() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise errors.ConfigError(f"WORLD_SIZE must be an integer, got {os.environ['WORLD_SIZE']!r}") from None


def init_from_env(timeout_s: float = 1800.0) -> bool:
    """Join the process group ``torchrun`` describes in the environment; True when running distributed.

    Does nothing (False) without ``WORLD_SIZE`` > 1, and nothing more when the group exists already
    (created here or by the caller). Idempotent: the methods call it themselves, so the Python API works
    under ``torchrun`` too; a command line calls it first, before the model goes to its device.

    Raises:
        ConfigError: ``WORLD_SIZE`` > 1 but ``torch.distributed`` is not available in this build.
    """
    if active():
        return True
    if _env_world() <= 1:
        return False
    if not dist.is_available():
        raise errors.ConfigError("WORLD_SIZE > 1 (torchrun) but this torch build has no torch.distributed")
    backend = "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
        backend = "cpu:gloo,cuda:nccl"
    dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
    log.info("distributed: rank %d of %d (%s)", rank(), world_size(), backend)
    return True


def active() -> bool:
    """A process group of more than one process exists."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if active() else 0


def world_size() -> int:
    """The number of processes (1 without a process group)."""
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Rank 0: the process that writes files, logs progress and reads states."""
    return rank() == 0


def progress_kwargs() -> dict[str, Any]:
    """tqdm keyword arguments: silent on ranks other than 0, the global switch (``TQDM_DISABLE``) on rank 0."""
    return {} if is_main() else {"disable": True}


def shard(n: int) -> list[int]:
    """The indices of ``range(n)`` this rank computes: every ``world_size()``-th from ``rank()``.

    Round robin keeps the shares balanced when the cost of the items drifts along the list (units of
    early blocks rerun more of the network than those of late blocks).
    """
    return list(range(rank(), n, world_size()))


def gather_values(values: dict[int, float | torch.Tensor], n: int) -> list[float]:
    """The ``n`` values of all ranks, each rank having computed its share of the indices (``values``:
    index -> value; e.g. those of :func:`shard`); every index must be computed by exactly one rank.

    Every rank gets the same list. Each index is filled by one rank and the others add zeros, so the
    all-reduced sum is exact: the values equal those one process computes (as float64).

    Raises:
        ValueError: ``values`` holds an index outside ``range(n)``.
    """
    if any(not 0 <= i < n for i in values):
        raise ValueError(f"gather_values: indices {sorted(i for i in values if not 0 <= i < n)} outside 0..{n - 1}")
    out = torch.zeros(n, dtype=torch.float64)
    for i, v in values.items():
        out[i] = float(v)
    if active():
        if str(dist.get_backend()) == "nccl":  # a group the caller made NCCL only: its tensors live on the GPU
            out = out.to(torch.device("cuda", torch.cuda.current_device()))
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out.cpu().tolist()


def sum_in_order(values: Sequence[float]) -> float:
    """Σ values, left to right in float64 (Python floats): the same total on every rank and in one process."""
    total = 0.0
    for v in values:
        total += v
    return total


def broadcast(obj: T) -> T:
    """Rank 0's ``obj`` on every rank (pickled through the process group between this job's own
    processes, never read from a file)."""
    if not active():
        return obj
    box = [obj if is_main() else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]  # type: ignore[return-value]


def main_decides(fn: Callable[[], T]) -> T:
    """``fn()`` run on rank 0 only (reading a state or a cache from disk), its result on every rank.

    A :class:`~vitcompress.errors.VitCompressError` raised by ``fn`` on rank 0 is raised on every rank
    (same class, same message), so no rank waits for the others in a collective that never comes.
    """
    if not active():
        return fn()
    outcome: tuple[str, Any] = ("ok", None)
    if is_main():
        try:
            outcome = ("ok", fn())
        except errors.VitCompressError as e:
            outcome = ("error", (type(e).__name__, str(e)))
    kind, payload = broadcast(outcome)
    if kind == "error":
        name, message = payload
        raise getattr(errors, name, errors.VitCompressError)(message)
    return payload


def barrier() -> None:
    """Wait for every rank (nothing in one process)."""
    if active():
        dist.barrier()


def shutdown() -> None:
    """Leave the process group (at the end of a command; nothing without one)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
