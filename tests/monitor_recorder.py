"""A `TrainingMonitor` that records what a trainer tells it (the splat and NeRF training-monitor tests)."""

from __future__ import annotations


class Recorder:
    """Records each step's model and metrics; answers ``paused`` True twice, then False (a short pause the
    trainer must wait through), asks for one save after step ``save_after``, and records ``close``."""

    def __init__(self, save_after: int = 3):
        self.steps, self.closed, self.pause_answers, self.save_after = [], False, [True, True], save_after

    def on_step(self, step, model, metrics):
        self.steps.append(step)
        self.last = (model, dict(metrics))
        self.seen(step, model)

    def seen(self, step, model) -> None:
        """A hook for what a test keeps of a step's model."""

    def paused(self):
        return self.pause_answers.pop() if self.pause_answers else False

    def take_save_request(self):
        return self.steps[-1] == self.save_after

    def close(self):
        self.closed = True
