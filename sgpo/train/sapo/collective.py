"""What the SAPO loop's processes agree on, through torch.distributed (no-ops in one process).

A launched SAPO run is plain data parallelism written out: every process holds the whole policy,
EMA and reference, trains on its own replay buffers, and after the backward passes of a step the
gradients are averaged over the processes (what DDP's all-reduce does), so every replica takes
the same optimiser step. The SIGTERM flag and the logged metrics are agreed on the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sgpo.core.ranks import rank, world_size


@dataclass(frozen=True)
class Processes:
    rank: int
    world: int
    device: Any  # torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def start_processes() -> Processes:
    """This process's place in the run and its device; joins the process group of a launch
    (gloo on CPU, NCCL on GPUs, through accelerate)."""
    import torch

    cuda = torch.cuda.is_available()
    if world_size() <= 1:
        return Processes(0, 1, torch.device("cuda" if cuda else "cpu"))
    from accelerate import PartialState

    state = PartialState(cpu=not cuda)
    device = torch.device("cuda", state.local_process_index) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    return Processes(rank(), world_size(), device)


def _dist():
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def barrier() -> None:
    if (dist := _dist()) is not None:
        dist.barrier()


def average_gradients(parameters) -> None:
    """Every parameter's gradient becomes its mean over the processes (in place)."""
    dist = _dist()
    if dist is None or dist.get_world_size() == 1:
        return
    grads = [p.grad for p in parameters if p.grad is not None]
    works = [dist.all_reduce(g, op=dist.ReduceOp.SUM, async_op=True) for g in grads]
    for w in works:
        w.wait()
    n = dist.get_world_size()
    for g in grads:
        g.div_(n)


def any_process(flag: bool, device) -> bool:
    """True on every process when it is True on one (e.g. SIGTERM reached one rank)."""
    dist = _dist()
    if dist is None:
        return flag
    import torch

    t = torch.tensor([1 if flag else 0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def mean_over_processes(values: dict[str, float], device) -> dict[str, float]:
    """Each value averaged over the processes (every process must pass the same keys)."""
    dist = _dist()
    if dist is None or not values:
        return values
    import torch

    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    t /= dist.get_world_size()
    return dict(zip(keys, t.tolist(), strict=True))
