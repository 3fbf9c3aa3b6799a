"""The training frame: normalisation is a similarity that leaves images unchanged and is undone on export;
initial scales from the 3 nearest neighbours; the cameras' focus point."""

from __future__ import annotations

import math

import torch

from recon3d.cameras import Cameras, look_at_world_to_camera
from recon3d.render import render
from recon3d.scene import GaussianScene
from recon3d.train.frame import WorldTransform, focus_point
from recon3d.train.method import knn_log_scale


def ring(center, dist, n=6):
    eyes = [torch.tensor(center) + dist * torch.tensor([math.cos(a), math.sin(a), 0.3])
            for a in torch.linspace(0, 2 * math.pi, n + 1)[:-1].tolist()]
    return Cameras.from_fov(torch.stack([look_at_world_to_camera(e, center) for e in eyes]), 0.8, 24, 20)


def test_normalisation_keeps_images_and_is_undone_on_export():
    cams = ring((10.0, -4.0, 3.0), 7.0)
    t = WorldTransform.from_cameras(cams)
    assert torch.allclose(t.points_to_train(cams.centers()).norm(dim=-1).max(), torch.tensor(1.0), atol=1e-5)
    g = torch.Generator().manual_seed(0)
    world = GaussianScene.from_points(torch.tensor([10.0, -4.0, 3.0]) + torch.randn(40, 3, generator=g),
                                      torch.rand(40, 3, generator=g), scale=0.3, opacity=0.8)
    train = GaussianScene(t.points_to_train(world.means), world.scales + math.log(t.scale), world.quats,
                          world.opacities, world.sh0, world.shN)
    a = render(world, cams, backend="reference").rgb
    b = render(train, t.cameras_to_train(cams), backend="reference").rgb
    assert (a - b).abs().max() < 1e-4  # the same images in both frames
    back = t.scene_to_world(train)
    assert torch.allclose(back.means, world.means, atol=1e-5) and torch.allclose(back.scales, world.scales, atol=1e-5)


def test_knn_log_scale_matches_brute_force():
    pts = torch.randn(50, 3, generator=torch.Generator().manual_seed(1))
    d = torch.cdist(pts.double(), pts.double())
    d.fill_diagonal_(float("inf"))
    expected = torch.log(d.topk(3, largest=False).values.mean(-1))
    assert torch.allclose(knn_log_scale(pts).double(), expected, atol=1e-5)


def test_focus_point_of_a_ring_is_its_target():
    cams = ring((1.0, 2.0, -3.0), 5.0, n=8)
    assert torch.allclose(focus_point(cams), torch.tensor([1.0, 2.0, -3.0]), atol=1e-3)
