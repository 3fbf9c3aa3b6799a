"""Data-parallel training: ``torchrun --nproc_per_node N -m recon3d.cli reconstruct …`` trains one scene in N
processes (and ``--nnodes M`` on M machines), through ``torch.distributed`` (gloo on CPUs, NCCL on GPUs).

How a step runs in N processes (``step.train_step`` with a ``Sync``):
- every process draws the whole global batch (N × ``--batch-size`` cameras) from the same seeded generator
  and renders its own slice, so N processes with batch B train on the very cameras of one with batch N·B;
- after the backward pass of its cameras' loss the gradients of every parameter group are averaged (one
  all-reduce), and only then the terms every process computes alike (the MCMC and appearance regularisers)
  add their gradients: the very sums one process with the whole batch forms, so every process takes the same
  Adam step as that process would (bit for bit on the CPU kernels, tested), and holds the same parameters;
- the densification statistics (the default strategy's screen-space gradient sums and visibility counts)
  are summed over the processes before they are accumulated, and after any step that edits the Gaussians
  (grow, prune, relocate, reset) every process takes rank 0's rows, moments, statistics and generator: the
  decision is rank 0's, and every process holds the same Gaussians;
- a NaN anywhere makes every process restore its last good snapshot together; Ctrl-C and the time budget
  (rank 0's clock) stop every process at the same step.

Rank 0 alone writes: config.yaml, checkpoints, scene.ply, metrics, renders. A checkpoint holds no trace of
the process count, so ``--resume`` continues with the same or another number of processes (the global batch
and, with it, the batch learning-rate rule follow the new count).

Faults: a process that dies makes the others stop at their next exchange with one line (the last checkpoint
and ``--resume``); processes of different recon3d/torch versions, or given different settings, stop before
training with one line from rank 0; nothing is written but through rank 0's atomic writes.
"""

from __future__ import annotations

import datetime
import os
import signal
from collections.abc import Callable

import torch

from ..errors import Recon3dError
from .state import TrainState


class PeerLost(Recon3dError):
    """Another training process stopped (it died, was killed, or lost its connection)."""


def requested() -> bool:
    """Whether this process was started as one of several (torchrun sets ``WORLD_SIZE``)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False


def env_rank() -> int:
    """This process's rank from the environment (0 when not distributed)."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


_LOST_WORDS = ("connection closed", "connection reset", "broken pipe", "timed out", "timeout", "socket",
               "peer", "gloo", "nccl", "aborted", "connection refused", "end of file")


def is_peer_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is a collective that failed because another process went away."""
    text = str(exc).lower()
    return isinstance(exc, (RuntimeError, ConnectionError, OSError)) and any(w in text for w in _LOST_WORDS)


class Sync:
    """This process's place in the group and the exchanges a data-parallel step needs."""

    def __init__(self, rank: int, world_size: int, device: torch.device, backend: str) -> None:
        self.rank = rank
        self.world_size = world_size
        self.device = device
        self.backend = backend
        # NCCL moves CUDA tensors only; gloo moves CPU tensors (and CUDA ones through the host)
        self.comm_device = device if backend == "nccl" else torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes."""
        return self.rank == 0

    # ------------------------------------------------------------------ exchanges
    def any(self, flag: bool) -> bool:
        """True on every process when ``flag`` is True on any."""
        import torch.distributed as dist

        t = torch.tensor([1.0 if flag else 0.0], device=self.comm_device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def control(self, interrupt: bool, stop: bool, total_steps: int) -> tuple[bool, bool, int]:
        """(interrupt on any process, rank 0's stop decision, rank 0's planned steps)."""
        import torch.distributed as dist

        mine = self.is_main
        t = torch.tensor([float(interrupt), float(stop and mine), float(total_steps if mine else 0)],
                         dtype=torch.float64, device=self.comm_device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t[0] > 0), bool(t[1] > 0), int(t[2])

    def average_gradients(self, tensors: list[torch.Tensor]) -> None:
        """Replace each gradient by its mean over the processes (one flat all-reduce)."""
        import torch.distributed as dist

        for t in tensors:  # a tensor this process's cameras left untouched still takes part (same layout everywhere)
            if t.grad is None and t.requires_grad:
                t.grad = torch.zeros_like(t)
        grads = [t.grad for t in tensors if t.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads]).to(self.comm_device)
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat /= self.world_size
        offset = 0
        for g in grads:
            n = g.numel()
            g.copy_(flat[offset:offset + n].view_as(g))
            offset += n

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` summed over the processes (a new tensor on ``tensor``'s device)."""
        import torch.distributed as dist

        t = tensor.to(self.comm_device).clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.to(tensor.device)

    def _broadcast(self, tensor: torch.Tensor | None, shape: tuple[int, ...], dtype: torch.dtype,
                   device: torch.device) -> torch.Tensor:
        import torch.distributed as dist

        t = tensor.detach().to(self.comm_device).contiguous() if self.is_main else torch.empty(
            shape, dtype=dtype, device=self.comm_device)
        dist.broadcast(t, 0)
        return t.to(device)

    def adopt_rank0_rows(self, state: TrainState) -> None:
        """Every process takes rank 0's Gaussians: parameters, Adam moments, strategy statistics, generator."""
        import torch.distributed as dist

        opt = state.optimizer
        names = sorted(opt.params)
        shapes = [[(name, tuple(opt.params[name].shape)) for name in names],
                  [(k, tuple(v.shape), str(v.dtype)) for k, v in sorted(state.strategy_state.items())]]
        dist.broadcast_object_list(shapes, src=0)
        for name, shape in shapes[0]:
            p = opt.params[name]
            value = self._broadcast(p, shape, p.dtype, p.device)
            m = self._broadcast(opt.exp_avg[name], shape, p.dtype, p.device)
            v = self._broadcast(opt.exp_avg_sq[name], shape, p.dtype, p.device)
            if not self.is_main:
                opt.replace_rows(name, value, m, v)
        for key, shape, dtype in shapes[1]:
            current = state.strategy_state.get(key)
            where = current.device if current is not None else state.params["means"].device
            value = self._broadcast(current, shape, getattr(torch, dtype.split(".")[-1]), where)
            if not self.is_main:
                state.strategy_state[key] = value
        gen = state.rng_device.get_state()
        gen = self._broadcast(gen, tuple(gen.shape), gen.dtype, gen.device)
        if not self.is_main:
            state.rng_device.set_state(gen.cpu())

    def barrier(self) -> None:
        """Wait for every process."""
        import torch.distributed as dist

        dist.barrier()

    def check_same(self, facts: dict[str, str]) -> None:
        """Stop every process (one line, rank 0) when any process reports other ``facts`` than rank 0."""
        import torch.distributed as dist

        gathered: list[dict[str, str] | None] = [None] * self.world_size
        dist.all_gather_object(gathered, facts)
        for rank, theirs in enumerate(gathered):
            differ = [k for k in facts if (theirs or {}).get(k) != gathered[0].get(k)]
            if differ:
                detail = "; ".join(f"{k}: rank 0 has {gathered[0].get(k)}, rank {rank} has {(theirs or {}).get(k)}"
                                   for k in differ)
                raise Recon3dError(f"the training processes differ ({detail}): install the same recon3d and torch "
                                   f"on every machine and start every process with the same arguments")

    def close(self) -> None:
        """Leave the process group."""
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def start(device: torch.device, timeout_minutes: float = 30.0) -> Sync:
    """Join the process group torchrun (or RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT) describes."""
    import torch.distributed as dist

    rank, world = env_rank(), int(os.environ.get("WORLD_SIZE", "1"))
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    if not dist.is_initialized():
        port = os.environ.get("MASTER_PORT", "?")
        host = os.environ.get("MASTER_ADDR", "?")
        try:
            dist.init_process_group(backend, rank=rank, world_size=world,
                                    timeout=datetime.timedelta(minutes=timeout_minutes))
        except (RuntimeError, ValueError, OSError) as exc:
            text = str(exc).lower()
            if "address already in use" in text or "eaddrinuse" in text:
                raise Recon3dError(f"the rendezvous port {host}:{port} is already in use: choose another with "
                                   f"torchrun --master_port (or --rdzv-endpoint HOST:PORT), or --standalone") from None
            raise Recon3dError(f"cannot join the {world} training processes at {host}:{port} as rank {rank} "
                               f"({str(exc).splitlines()[0][:200]})") from None
    return Sync(rank, world, device, backend)


def install_termination_line(sync: Sync, where: Callable[[], str]) -> None:
    """torchrun stops the other processes with SIGTERM when one fails: end with one line, not a traceback."""

    def handler(signum, frame):
        raise PeerLost(f"rank {sync.rank} of {sync.world_size} stopped: another training process failed and "
                       f"torchrun ended the rest; {where()}")

    try:
        signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        pass
