"""Adam over named Gaussian parameters, with row edits that keep parameters and moments aligned.

Densification adds, removes and rewrites Gaussians (rows). A plain ``torch.optim.Adam`` keys its state by
tensor identity, so every edit would have to re-register tensors; keeping the moments by name here makes
each edit one indexing operation applied to the parameter and both moments together.
"""

from __future__ import annotations

import math

import torch

from . import cpu_ops

PARAM_NAMES = ("means", "scales", "quats", "opacities", "sh0", "shN")

# torch's fused multi-tensor Adam kernel (CPU since torch 2.4, and CUDA); None on a torch without it
_FUSED_ADAM = getattr(torch, "_fused_adam_", None)


class GaussianAdam:
    """Adam (β = 0.9, 0.999, ε = 1e-15 as 3DGS) with one learning rate per named parameter."""

    def __init__(self, params: dict[str, torch.Tensor], lrs: dict[str, float], eps: float = 1e-15,
                 betas: tuple[float, float] = (0.9, 0.999)) -> None:
        self.params = params
        self.lrs = dict(lrs)
        self.eps = eps
        self.betas = betas
        self.step_count = 0
        self.fused = True  # False: the reference loop below (tests compare the two)
        self.exp_avg = {k: torch.zeros_like(v) for k, v in params.items()}
        self.exp_avg_sq = {k: torch.zeros_like(v) for k, v in params.items()}
        # The caller may promise that only the first ``used_columns[name]`` columns (of each row, the rest
        # of the dimensions flattened) have nonzero gradients this step: the SH coefficients above the
        # degree rendered so far. Columns from ``_active[name]`` on also have zero moments, where Adam is
        # the identity, so the C path skips them (exactly the same result, a quarter of the work at SH
        # degree 0). ``_active`` only grows; every row edit keeps moments of untouched columns at zero.
        self.used_columns: dict[str, int] = {}
        self._active: dict[str, int] = {k: 0 for k in params}

    @torch.no_grad()
    def step(self, lr_scale: float = 1.0) -> None:
        """One Adam update of every parameter that has a gradient."""
        self.step_count += 1
        if self.fused and self._c_step(lr_scale):
            return
        if _FUSED_ADAM is not None and self.fused:
            self._fused_step(lr_scale)
            return
        b1, b2 = self.betas
        bc1 = 1.0 - b1**self.step_count
        bc2 = 1.0 - b2**self.step_count
        for name, p in self.params.items():
            g = p.grad
            if g is None or p.numel() == 0:
                continue
            m, v = self.exp_avg[name], self.exp_avg_sq[name]
            m.mul_(b1).add_(g, alpha=1.0 - b1)
            v.mul_(b2).addcmul_(g, g, value=1.0 - b2)
            denom = (v / bc2).sqrt_().add_(self.eps)
            p.addcdiv_(m, denom, value=-self.lrs[name] * lr_scale / bc1)

    def _c_step(self, lr_scale: float) -> bool:
        """The whole update in one C pass (CPU float32); False where it does not apply."""
        names = [k for k, p in self.params.items() if p.grad is not None and p.numel()]
        if not names:
            return True
        tensors = [t for k in names for t in (self.params[k], self.params[k].grad, self.exp_avg[k], self.exp_avg_sq[k])]
        if not cpu_ops.adam_applies(*tensors):
            return False
        active = []
        for k in names:
            width = self.params[k].numel() // max(self.params[k].shape[0], 1)
            used = self.used_columns.get(k)
            if used is None or not 0 <= used <= width:
                used = width
            self._active[k] = max(self._active.get(k, width), used)
            active.append(self._active[k])
        cpu_ops.adam_step_(
            [self.params[k].detach() for k in names], [self.params[k].grad for k in names],
            [self.exp_avg[k] for k in names], [self.exp_avg_sq[k] for k in names],
            [self.lrs[k] * lr_scale for k in names], self.step_count, self.betas[0], self.betas[1], self.eps, active,
        )
        return True

    def _fused_step(self, lr_scale: float) -> None:
        # torch's fused Adam kernel: one pass over each tensor instead of eight (4× faster on a CPU). It
        # computes sqrt(v)/sqrt(bc2) + eps where the loop computes sqrt(v/bc2) + eps: equal up to rounding.
        b1, b2 = self.betas
        for name, p in self.params.items():
            g = p.grad
            if g is None or p.numel() == 0:
                continue
            step = torch.tensor(float(self.step_count), dtype=torch.float32, device=p.device)
            _FUSED_ADAM(
                [p], [g], [self.exp_avg[name]], [self.exp_avg_sq[name]], [], [step],
                lr=self.lrs[name] * lr_scale, beta1=b1, beta2=b2, weight_decay=0.0, eps=self.eps,
                amsgrad=False, maximize=False,
            )

    def zero_grad(self) -> None:
        """Drop every gradient."""
        for p in self.params.values():
            p.grad = None

    # ------------------------------------------------------------------ row edits
    def _replace(self, name: str, value: torch.Tensor, m: torch.Tensor, v: torch.Tensor) -> None:
        self.params[name] = value.detach().requires_grad_(True)
        self.exp_avg[name] = m
        self.exp_avg_sq[name] = v

    def replace_rows(self, name: str, value: torch.Tensor, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor) -> None:
        """Set parameter ``name`` and its moments wholesale (data-parallel training adopts rank 0's rows)."""
        self._replace(name, value, exp_avg, exp_avg_sq)

    @torch.no_grad()
    def keep(self, mask: torch.Tensor) -> None:
        """Keep the rows where ``mask`` is True (prune the rest)."""
        for name in list(self.params):
            self._replace(name, self.params[name][mask], self.exp_avg[name][mask], self.exp_avg_sq[name][mask])

    @torch.no_grad()
    def append(self, new_rows: dict[str, torch.Tensor]) -> None:
        """Append rows (every parameter) with zero moments."""
        for name in list(self.params):
            rows = new_rows[name].to(self.params[name].dtype)
            z = torch.zeros_like(rows)
            self._replace(
                name,
                torch.cat([self.params[name], rows]),
                torch.cat([self.exp_avg[name], z]),
                torch.cat([self.exp_avg_sq[name], z.clone()]),
            )

    @torch.no_grad()
    def overwrite(self, index: torch.Tensor, values: dict[str, torch.Tensor], reset_moments: bool = True) -> None:
        """Set rows ``index`` of the named parameters to ``values``; their moments restart from zero."""
        for name, value in values.items():
            p = self.params[name].detach().clone()
            p[index] = value.to(p.dtype)
            m, v = self.exp_avg[name], self.exp_avg_sq[name]
            if reset_moments:
                m, v = m.clone(), v.clone()
                m[index] = 0
                v[index] = 0
            self._replace(name, p, m, v)

    @torch.no_grad()
    def reset_moments(self, name: str, index: torch.Tensor | None = None) -> None:
        """Zero the moments of one parameter (all rows, or ``index``)."""
        if index is None:
            self.exp_avg[name].zero_()
            self.exp_avg_sq[name].zero_()
        else:
            self.exp_avg[name][index] = 0
            self.exp_avg_sq[name][index] = 0

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        """Tensors and plain numbers only (loadable with weights_only=True)."""
        return {
            "step_count": self.step_count,
            "lrs": dict(self.lrs),
            "exp_avg": {k: v.detach().clone() for k, v in self.exp_avg.items()},
            "exp_avg_sq": {k: v.detach().clone() for k, v in self.exp_avg_sq.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore what ``state_dict`` returned (parameters are restored separately)."""
        self.step_count = int(state["step_count"])
        self.lrs = {k: float(v) for k, v in state["lrs"].items()}
        self.exp_avg = {k: v.clone() for k, v in state["exp_avg"].items()}
        self.exp_avg_sq = {k: v.clone() for k, v in state["exp_avg_sq"].items()}
        self._active = {k: self._columns_with_moments(k) for k in self.exp_avg}

    def _columns_with_moments(self, name: str) -> int:
        """1 + the last column (rows flattened) where a moment is nonzero; 0 if every moment is zero."""
        m, v = self.exp_avg[name], self.exp_avg_sq[name]
        if m.numel() == 0:
            return 0
        nonzero = ((m != 0) | (v != 0)).reshape(m.shape[0], -1).any(0)
        where = torch.nonzero(nonzero)
        return int(where[-1, 0]) + 1 if len(where) else 0


def exponential_lr(step: int, total: int, lr_start: float, lr_end: float) -> float:
    """Log-linear interpolation from ``lr_start`` at step 0 to ``lr_end`` at ``total``."""
    t = min(max(step / max(total, 1), 0.0), 1.0)
    return math.exp((1 - t) * math.log(lr_start) + t * math.log(lr_end))
