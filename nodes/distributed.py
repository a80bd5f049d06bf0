"""More than one process: the torch.distributed context of a run (torchrun or any launcher that sets the env://
variables), and the index arithmetic every distributed command shares.

`Dist` is the process's place in the group (rank, world size, its device); `init_distributed` joins the group
when the environment names one (WORLD_SIZE > 1: gloo on the CPU, NCCL on CUDA with one device per local rank) and
otherwise returns the single-process context, so library code takes a `Dist` and never asks whether it is
distributed. Shards are contiguous runs of whole batches, so that a shard's batches are exactly the batches the
single-process run makes (bit-identical per-input results, whatever the world size)."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any, Iterator

import torch
import torch.distributed as torch_dist

from contraction.errors import CNodeError
from nodes.device import resolve_device

__all__ = ["Dist", "SINGLE", "init_distributed", "close_distributed", "process_group", "batch_shard", "parse_shard"]


@dataclass(frozen=True)
class Dist:
    """This process's place in the group: `rank` of `world` processes, on `device` (None: the caller's choice)."""

    rank: int = 0
    world: int = 1
    device: torch.device | None = None

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        """Rank 0: the one process that prints, writes checkpoints and reports."""
        return self.rank == 0

    def all_sum(self, values: list[float]) -> list[float]:
        """The sums over the ranks of a few numbers (float64; identity with one process)."""
        if not self.distributed:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self._comm_device())
        torch_dist.all_reduce(t)
        return t.tolist()

    def all_gather(self, obj: Any) -> list[Any]:
        """Every rank's `obj` (picklable), in rank order, on every rank; [obj] with one process."""
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.world
        torch_dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.distributed:
            torch_dist.barrier()

    def _comm_device(self) -> torch.device:
        return self.device if self.device is not None and self.device.type == "cuda" else torch.device("cpu")


SINGLE = Dist()


def init_distributed(device: str | None = "auto") -> Dist:
    """Join the process group that the environment describes (torchrun sets WORLD_SIZE, RANK, LOCAL_RANK,
    MASTER_ADDR, MASTER_PORT), or return the one-process context. On CUDA each rank takes device LOCAL_RANK and
    the NCCL backend; on the CPU, gloo. `device` as everywhere ('auto', 'cpu', 'cuda')."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return SINGLE
    if torch_dist.is_initialized():
        return Dist(torch_dist.get_rank(), torch_dist.get_world_size(), _rank_device(device))
    dev = _rank_device(device)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    try:
        torch_dist.init_process_group(backend=backend, init_method="env://",
                                      **({"device_id": dev} if dev.type == "cuda" else {}))
    except (ValueError, RuntimeError) as e:
        raise CNodeError(f"could not join the process group ({backend}): {str(e).splitlines()[0]}") from None
    return Dist(torch_dist.get_rank(), torch_dist.get_world_size(), dev)


def _rank_device(device: str | None) -> torch.device:
    dev = resolve_device(device)
    if dev.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if local >= torch.cuda.device_count():
            raise CNodeError(f"local rank {local} has no CUDA device ({torch.cuda.device_count()} here): start at most "
                             "one process per GPU (--nproc_per_node)")
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    return dev


def close_distributed(dist: Dist) -> None:
    """Leave the process group (a no-op with one process)."""
    if dist.distributed and torch_dist.is_initialized():
        torch_dist.destroy_process_group()


@contextlib.contextmanager
def process_group(device: str | None = "auto") -> Iterator[Dist]:
    """`init_distributed` for the block, the group left afterwards (a no-op context with one process). On a normal
    exit the ranks wait for each other first: a rank tearing gloo down while a peer is still working can abort
    (seen once here, exit -6 in a 2-rank run under load); after an exception they leave at once (a barrier could
    wait forever for a rank that failed elsewhere)."""
    dist = init_distributed(device)
    try:
        yield dist
        dist.barrier()
    finally:
        close_distributed(dist)


def batch_shard(n: int, batch_size: int, shard: int, shards: int) -> range:
    """Shard `shard` of `shards` of the indices 0..n-1: a contiguous run of whole batches of `batch_size` (batch k of
    the single-process run goes to shard floor(k * shards / batches)); shards may be empty when there are fewer
    batches than shards."""
    if not 0 <= shard < shards:
        raise CNodeError(f"shard must be in 0..{shards - 1}, got {shard}")
    nb = (n + batch_size - 1) // batch_size
    first, last = (shard * nb) // shards, ((shard + 1) * nb) // shards
    return range(min(first * batch_size, n), min(last * batch_size, n))


def parse_shard(text: str) -> tuple[int, int]:
    """'i/n' -> (i, n) with 0 <= i < n (the job-array convention: shards numbered from 0)."""
    i, sep, n = text.partition("/")
    try:
        shard, shards = int(i), int(n)
    except ValueError:
        shard, shards = -1, 0
    if not sep or shards < 1 or not 0 <= shard < shards:
        raise CNodeError(f"--shard takes i/n with 0 <= i < n (e.g. 0/4), got {text!r}")
    return shard, shards
