"""Where a training step's time goes (``RECON3D_PROFILE=1``) and the process's peak memory."""

from __future__ import annotations

import os
import resource
import sys
import time

import torch


def peak_ram_mb() -> float:
    """Peak resident memory of this process in MiB."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024.0 * 1024.0) if sys.platform == "darwin" else rss / 1024.0




class StepProfile:
    """Wall time per phase of a training step, on when ``RECON3D_PROFILE=1`` (a summary is printed at the end).

    Each ``mark(name)`` charges the time since the previous mark to ``name``; on a GPU it synchronises
    first, so the figures are honest there too (and the run is slower: profile only to measure).
    ``RECON3D_PROFILE_FROM=N`` discards the first N steps (e.g. those before an MCMC cap is reached).
    """

    def __init__(self, device: torch.device, enabled: bool | None = None) -> None:
        self.enabled = os.environ.get("RECON3D_PROFILE", "0") not in ("", "0") if enabled is None else enabled
        self.skip = int(os.environ.get("RECON3D_PROFILE_FROM", "0") or 0)
        self._seen = 0
        self.cuda = device.type == "cuda"
        self.totals: dict[str, float] = {}
        self.cpu_totals: dict[str, float] = {}  # process CPU time (all threads): robust on a shared machine
        self.steps = 0
        self._last = 0.0
        self._last_cpu = 0.0

    def start(self) -> None:
        """Begin a step."""
        if self.enabled:
            self._sync()
            self._last = time.perf_counter()
            self._last_cpu = time.process_time()

    def mark(self, name: str) -> None:
        """Charge the time since the last mark to ``name``."""
        if self.enabled:
            self._sync()
            now, cpu = time.perf_counter(), time.process_time()
            self.totals[name] = self.totals.get(name, 0.0) + now - self._last
            self.cpu_totals[name] = self.cpu_totals.get(name, 0.0) + cpu - self._last_cpu
            self._last, self._last_cpu = now, cpu

    def end(self) -> None:
        """Finish a step."""
        if self.enabled:
            self._seen += 1
            if self._seen <= self.skip:  # warm-up steps: forget what they cost
                self.totals.clear()
                self.cpu_totals.clear()
                return
            self.steps += 1

    def _sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def summary(self, cpu: bool = False) -> dict[str, float]:
        """Mean milliseconds per step for each phase (wall clock, or process CPU time with ``cpu``)."""
        totals = self.cpu_totals if cpu else self.totals
        return {k: 1000.0 * v / max(self.steps, 1) for k, v in totals.items()}

    def table(self) -> str:
        """The summary as text, the largest phase first."""
        wall, cpu = self.summary(), self.summary(cpu=True)
        rows = sorted(wall.items(), key=lambda kv: -kv[1])
        total, total_cpu = sum(wall.values()), sum(cpu.values())
        lines = [f"step profile over {self.steps} steps: {total:.1f} ms/step wall, {total_cpu:.1f} ms CPU "
                 f"({torch.get_num_threads()} threads)"]
        lines += [f"  {k:<18s} {v:8.2f} ms  {100 * v / max(total, 1e-12):5.1f} %   CPU {cpu.get(k, 0.0):8.2f} ms"
                  for k, v in rows]
        return "\n".join(lines)


