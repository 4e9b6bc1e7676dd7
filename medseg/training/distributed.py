"""Training on several processes: the process group and each rank's share of an epoch (the launcher of
``--nproc N``: :mod:`medseg.training.launcher`).

``torchrun --nproc_per_node=N -m medseg train CONFIG`` (or ``medseg train CONFIG --nproc N``) starts N copies of
the training; :func:`start_distributed` joins them into one process group from the variables torchrun sets
(``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``): NCCL on
CUDA (one device per process), gloo on CPU.

``train.batch_size`` is the global batch: the samples of one optimizer step, whatever the number of processes.
Each step's batch is cut into ``world_size x train.grad_accumulation`` equal micro-batches, rank ``r`` taking the
``r``-th contiguous share. Since the losses are means over samples and DDP averages the gradients of the ranks,
a step on N processes applies the gradient one process computes on the whole batch (batch norm aside: its
statistics are per process unless ``train.sync_batchnorm``). The epoch's order is the permutation of
``epoch_seed(seed, epoch)`` (the one a shuffled ``DataLoader`` draws), so neither the order nor the batches
depend on the number of processes, and a run may be resumed on another number of them.

Every collective waits at most ``train.distributed_timeout_s``; a peer that died or hangs makes the others stop
with a :class:`PeerLostError` instead of waiting forever.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch

from medseg.device import resolve_device
from medseg.errors import ConfigError, MedsegError, shortened
from medseg.seeds import epoch_seed
from medseg.training.launcher import launch_local, preflight

__all__ = [
    "Dist", "PeerLostError", "Share", "epoch_batches", "is_peer_failure", "launch_local", "loader_generator",
    "micro_batch_size", "preflight", "start_distributed", "stop_distributed", "wrap_model",
]

log = logging.getLogger(__name__)

T = TypeVar("T")


class PeerLostError(MedsegError):
    """Another training process died or did not answer within the timeout."""


@dataclass(frozen=True)
class Share:
    """Which part of each optimizer step's batch one process trains on.

    Attributes:
        rank: This process (0 .. world_size - 1).
        world_size: Number of training processes.
        accumulation: Micro-batches per process and optimizer step (``train.grad_accumulation``).
    """

    rank: int = 0
    world_size: int = 1
    accumulation: int = 1


def micro_batch_size(batch_size: int, world_size: int, accumulation: int) -> int:
    """Samples per forward pass: the global batch over ``world_size x accumulation``.

    Example:
        >>> micro_batch_size(8, 2, 2)
        2
        >>> micro_batch_size(6, 4, 1)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        medseg.errors.ConfigError: train.batch_size: 6 samples per step cannot be split evenly over 4 processes ...

    Raises:
        ConfigError: ``batch_size`` is not a multiple of ``world_size * accumulation``.
    """
    parts = world_size * accumulation
    if batch_size % parts:
        raise ConfigError(
            f"train.batch_size: {batch_size} samples per step cannot be split evenly over {world_size} processes "
            f"x {accumulation} accumulation step(s); use a multiple of {parts} (e.g. {-(-batch_size // parts) * parts})"
        )
    return batch_size // parts


def loader_generator(seed: int, epoch: int) -> torch.Generator:
    """The generator of an epoch's order (also given to its ``DataLoader``, which draws the workers' base seed)."""
    return torch.Generator().manual_seed(epoch_seed(seed, epoch))


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int, share: Share = Share()) -> list[list[int]]:
    """This process's micro-batches (dataset indices) of one epoch, in training order.

    The global order is the one a shuffled ``DataLoader`` with :func:`loader_generator` draws, cut into batches of
    ``batch_size``; an incomplete last batch is dropped, and a set smaller than one batch is repeated to fill
    one. Each batch is split into ``world_size`` contiguous shares, each share into ``accumulation``
    micro-batches. Every process gets the same number of micro-batches.

    Example:
        >>> whole = epoch_batches(10, 4, 0, 0)
        >>> r0, r1 = (epoch_batches(10, 4, 0, 0, Share(r, 2)) for r in (0, 1))
        >>> [a + b for a, b in zip(r0, r1)] == whole, len(whole)
        (True, 2)
        >>> epoch_batches(3, 4, 0, 0, Share(0, 1, 2))  # 3 samples padded to a batch of 4, two micro-batches
        [[2, 1], [0, 2]]

    Raises:
        ConfigError: The batch does not split evenly (see :func:`micro_batch_size`).
    """
    m = micro_batch_size(batch_size, share.world_size, share.accumulation)
    if n <= 0:
        return []
    gen = loader_generator(seed, epoch)
    torch.empty((), dtype=torch.int64).random_(generator=gen)  # a shuffled DataLoader's first draw (its base seed)
    order = torch.randperm(n, generator=gen).tolist()
    if n < batch_size:
        order = (order * -(-batch_size // n))[:batch_size]
    per_rank = m * share.accumulation
    out = []
    for start in range(0, len(order) - batch_size + 1, batch_size):
        mine = order[start + share.rank * per_rank: start + (share.rank + 1) * per_rank]
        out += [mine[k * m:(k + 1) * m] for k in range(share.accumulation)]
    return out


@dataclass(frozen=True)
class Dist:
    """This process's place in the training job; every collective is a no-op for a single process.

    Attributes:
        rank: Global rank (0 writes the run folder).
        world_size: Number of processes.
        local_rank: Rank on this node (the CUDA device it uses).
        timeout_s: Longest wait of a collective before :class:`PeerLostError`.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    timeout_s: float = 600.0

    @property
    def is_main(self) -> bool:
        """True on rank 0, the process that writes the run folder."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """True when there is more than one process."""
        return self.world_size > 1

    def lost(self, what: str, err: BaseException) -> PeerLostError:
        """The error to raise when a collective failed: names this rank, what it was doing and the timeout."""
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        return PeerLostError(
            f"rank {self.rank} of {self.world_size}: lost the other training processes while {what} "
            f"(one died or did not answer within train.distributed_timeout_s = {self.timeout_s:g} s; "
            f"{shortened(first, 200)}); stopping. The run folder keeps the last finished epoch: continue with --resume"
        )

    def barrier(self, what: str = "waiting for the others") -> None:
        """Wait until every process gets here."""
        if not self.enabled:
            return
        import torch.distributed as tdist

        try:
            tdist.barrier()
        except (RuntimeError, tdist.DistError) as err:
            raise self.lost(what, err) from None

    def all_reduce_sum(self, tensor: torch.Tensor, what: str = "summing across processes") -> torch.Tensor:
        """Sum ``tensor`` over the processes, in place; returns it."""
        if not self.enabled:
            return tensor
        import torch.distributed as tdist

        try:
            tdist.all_reduce(tensor)
        except (RuntimeError, tdist.DistError) as err:
            raise self.lost(what, err) from None
        return tensor

    def gather_objects(self, obj: T, what: str = "gathering results") -> list[T]:
        """Every process's ``obj`` (picklable), in rank order, on every process."""
        if not self.enabled:
            return [obj]
        import torch.distributed as tdist

        out: list[Any] = [None] * self.world_size
        try:
            tdist.all_gather_object(out, obj)
        except (RuntimeError, tdist.DistError) as err:
            raise self.lost(what, err) from None
        return out

    def broadcast_object(self, obj: T, what: str = "receiving rank 0's decision") -> T:
        """Rank 0's ``obj`` on every process."""
        if not self.enabled:
            return obj
        import torch.distributed as tdist

        box: list[Any] = [obj]
        try:
            tdist.broadcast_object_list(box, src=0)
        except (RuntimeError, tdist.DistError) as err:
            raise self.lost(what, err) from None
        return box[0]


_PEER_SIGNS = ("gloo", "nccl", "connection closed", "connection reset", "timed out", "timeout", "broken pipe")


def is_peer_failure(err: BaseException) -> bool:
    """Whether ``err`` (raised inside DistributedDataParallel or a collective) means the other processes are gone.

    Example:
        >>> is_peer_failure(RuntimeError("[gloo/transport/tcp/pair.cc:553] Connection closed by peer"))
        True
        >>> is_peer_failure(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
        False
    """
    import torch.distributed as tdist

    text = str(err).lower()
    return isinstance(err, tdist.DistError) or any(sign in text for sign in _PEER_SIGNS)


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"environment variable {name}: got {raw!r}; torchrun sets it to an integer") from None


def start_distributed(device_name: str, timeout_s: float) -> tuple[Dist, torch.device]:
    """Join the process group torchrun describes (if any) and pick this process's device.

    A single process (no ``WORLD_SIZE``, or 1) gets ``Dist()`` and :func:`~medseg.device.resolve_device`'s device.

    Args:
        device_name: ``train.device`` (auto, cpu, cuda).
        timeout_s: ``train.distributed_timeout_s``.

    Returns:
        ``(dist, device)``; on CUDA the device is ``cuda:LOCAL_RANK``.

    Raises:
        ConfigError: Bad torchrun variables, or more processes on this node than CUDA devices.
        PeerLostError: The process group could not be formed within the timeout.
    """
    world = _env_int("WORLD_SIZE", 1)
    device = resolve_device(device_name)
    if world <= 1:
        return Dist(timeout_s=timeout_s), device
    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    dist = Dist(rank, world, local_rank, timeout_s)
    if device.type == "cuda":
        local_world, count = _env_int("LOCAL_WORLD_SIZE", world), torch.cuda.device_count()
        if local_world > count:
            raise ConfigError(
                f"{local_world} training processes on this node but {count} CUDA device(s): each process needs its "
                f"own device; use --nproc {count} (torchrun --nproc_per_node={count}) or train.device=cpu"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    import torch.distributed as tdist

    if not tdist.is_initialized():
        try:
            tdist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timedelta(seconds=timeout_s))
        except (RuntimeError, tdist.DistError) as err:
            raise dist.lost("forming the process group", err) from None
    return dist, device


def stop_distributed() -> None:
    """Leave the process group (if this process joined one)."""
    import torch.distributed as tdist

    if tdist.is_available() and tdist.is_initialized():
        tdist.destroy_process_group()


def wrap_model(model: torch.nn.Module, dist: Dist, device: torch.device, *, sync_batchnorm: bool
               ) -> tuple[torch.nn.Module, torch.nn.Module]:
    """``(model, net)``: the model (with synchronised batch norm if asked) and DistributedDataParallel around it
    (what trains); ``(model, model)`` for one process.

    Raises:
        ConfigError: ``sync_batchnorm`` on CPU processes (PyTorch synchronises batch norm on GPUs only).
    """
    if not dist.enabled:
        return model, model
    if sync_batchnorm:
        if device.type != "cuda":
            raise ConfigError("train.sync_batchnorm: PyTorch synchronises batch norm on CUDA devices only; "
                              "set it to false for CPU processes (or use model.norm: instance)")
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ids = [device.index] if device.type == "cuda" else None
    return model, torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
