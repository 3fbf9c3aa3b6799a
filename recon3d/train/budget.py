"""What a time budget affords: the seconds per step as a fixed part plus a part per Gaussian.

A step's time is about ``a + b·N``: ``a`` for the pixels (rendering and the loss of a whole image, the
Python around it) and ``b`` per Gaussian (projection, SH, sorting, Adam). On small images ``a`` is small
and the time grows nearly in proportion to the count; on a 1200×800 photo ``a`` dominates, and a count
that doubles the Gaussians' part costs little more per step. A budgeted run fits ``a`` and ``b`` to its
own recent steps (the count changes while it grows, so the two separate), and grows to the count at which
the rest of the budget still runs the preset's planned steps, and in any case to the count whose part
equals the fixed part (when even no Gaussians at all would not fit the planned steps, time spent on the
pixels anyway is best spent on a scene that can use them).
"""

from __future__ import annotations

from collections import deque

import numpy as np

MIN_SAMPLES = 30  # steps needed before a fit
MIN_SPREAD = 1.15  # largest / smallest count among them: below this the two parts do not separate
PRE_FIT_GROWTH = 1.5  # before a fit: the count may grow this much beyond the proportional estimate


class StepCost:
    """A running least-squares fit of seconds per step against the Gaussian count, over recent steps."""

    def __init__(self, window: int = 400) -> None:
        self.samples: deque[tuple[int, float]] = deque(maxlen=window)

    def add(self, count: int, seconds: float) -> None:
        """Record one step (the count it ran with and its wall time)."""
        if seconds > 0:
            self.samples.append((int(count), float(seconds)))

    def fit(self) -> tuple[float, float] | None:
        """(a, b) with seconds ≈ a + b·count, or None while the recent counts are too alike to tell them apart."""
        if len(self.samples) < MIN_SAMPLES:
            return None
        n, t = np.array(self.samples, dtype=np.float64).T
        keep = t <= np.quantile(t, 0.9)  # refinements, checkpoints and evaluations are outliers, not the rate
        n, t = n[keep], t[keep]
        if len(n) < MIN_SAMPLES // 2 or n.min() <= 0 or n.max() < MIN_SPREAD * n.min():
            return None
        b, a = np.polyfit(n, t, 1)
        if not np.isfinite(a) or not np.isfinite(b) or b <= 0:
            return None
        a = max(float(a), 0.0)
        return a, float(b)

    def affordable(self, count: int, seconds_per_step: float, remaining: float, steps_left: int) -> int:
        """The count at which ``remaining`` seconds still run ``steps_left`` steps (see the module's note).

        ``seconds_per_step``: the recent time per step at ``count`` (used while there is no fit, with time
        taken as proportional to the count, allowing growth by ``PRE_FIT_GROWTH`` so that a fit can come).
        """
        target = remaining / max(1, steps_left)
        fitted = self.fit()
        if fitted is None:
            proportional = count * target / max(seconds_per_step, 1e-9)
            return int(max(proportional, PRE_FIT_GROWTH * count))
        a, b = fitted
        return int(max(target - a, a) / b)
