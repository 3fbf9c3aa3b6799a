"""The ``TrainingMonitor`` protocol: how the trainer talks to a live viewer (or any other observer)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from ..scene import GaussianScene


@runtime_checkable
class TrainingMonitor(Protocol):
    """Observer of a training run; ``recon3d.viewer.training.TrainingViewer`` implements it."""

    def on_step(self, step: int, scene: GaussianScene, metrics: dict[str, float]) -> None:
        """Called every step with the current scene (world frame of the input) and at least "loss",
        "psnr", "num_gaussians", "steps_per_second"; must be cheap (the monitor throttles itself). A NeRF
        training passes its live ``NerfModel`` as ``scene`` (with "rays" and "samples", no "num_gaussians");
        a monitor copies it with ``snapshot()`` when it keeps it."""
        ...

    def paused(self) -> bool:
        """While True the trainer sleeps, checking every 0.1 s."""
        ...

    def take_save_request(self) -> bool:
        """True once after the user asked for a checkpoint."""
        ...

    def close(self) -> None:
        """The run is over (finished, interrupted or failed)."""
        ...


class NullMonitor:
    """A monitor that observes nothing (the default)."""

    def on_step(self, step: int, scene: GaussianScene, metrics: dict[str, float]) -> None:
        """Ignore the step."""

    def paused(self) -> bool:
        """Never paused."""
        return False

    def take_save_request(self) -> bool:
        """Never asks for a save."""
        return False

    def close(self) -> None:
        """Nothing to release."""
