"""``optim.appearance_row_adam``: the affine appearance stepped over the rendered images' rows only."""

from __future__ import annotations

import torch
from test_camera_drift import _adam_reference

from recon3d.train.appearance import AffineAppearance


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
        want = _adam_reference([x.double().numpy() for x in gs], 1e-2)  # textbook Adam, float64
        assert torch.allclose(app.delta.detach()[i].double(), torch.from_numpy(want), atol=1e-6)
    assert app.optimizer.counts.tolist() == [3, 1, 2, 0, 0]
    # a dense-Adam checkpoint loads: every row counted as stepped each step
    dense = AffineAppearance(5, lr=1e-2)
    (dense.apply(rgb, 1) - targets[1]).square().mean().backward()
    dense.step()
    again = AffineAppearance(5, lr=1e-2, row_adam=True)
    again.load_state(dense.state())
    assert again.optimizer.counts.tolist() == [1] * 5 and torch.equal(again.delta, dense.delta)
