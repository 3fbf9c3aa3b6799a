"""``optim.appearance_row_adam``: the affine appearance stepped over the rendered images' rows only."""

from __future__ import annotations

import torch

from recon3d.train.appearance import AffineAppearance


def _textbook_adam(grads: list[torch.Tensor], lr: float, b1: float = 0.9, b2: float = 0.999,
                   eps: float = 1e-15) -> torch.Tensor:
    x = torch.zeros_like(grads[0])
    m, v = torch.zeros_like(x), torch.zeros_like(x)
    for n, g in enumerate(grads, 1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        x = x - lr * (m / (1 - b1**n)) / ((v / (1 - b2**n)).sqrt() + eps)
    return x


def test_row_adam_moves_only_the_rendered_rows_as_adam_on_their_own_gradients():
    g = torch.Generator().manual_seed(0)
    app = AffineAppearance(5, lr=1e-2, rows=[0, 1, 2, 3], row_adam=True)
    targets = torch.rand(5, 8, 8, 3, generator=g)
    rgb = torch.rand(8, 8, 3, generator=g)
    order, grads = [0, 2, 0, 1, 2, 0], {0: [], 1: [], 2: []}
    for i in order:
        loss = (app.apply(rgb, i) - targets[i]).square().mean() + app.regulariser()
        loss.backward()
        grads[i].append(app.delta.grad[i].clone())
        before = app.delta.detach().clone()
        app.step()
        moved = (app.delta.detach() != before).flatten(1).any(1)
        assert moved.tolist() == [k == i for k in range(5)]  # the mean pull reaches every row; only i moves
    for i, gs in grads.items():
        assert torch.allclose(app.delta.detach()[i], _textbook_adam(gs, 1e-2), atol=1e-6)
    assert app.optimizer.counts.tolist() == [3, 1, 2, 0, 0]
    # a dense-Adam checkpoint loads: every row counted as stepped each step
    dense = AffineAppearance(5, lr=1e-2)
    (dense.apply(rgb, 1) - targets[1]).square().mean().backward()
    dense.step()
    again = AffineAppearance(5, lr=1e-2, row_adam=True)
    again.load_state(dense.state())
    assert again.optimizer.counts.tolist() == [1] * 5 and torch.equal(again.delta, dense.delta)
