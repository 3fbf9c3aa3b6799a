"""The training image store (recon3d/data/image_store.py): uint8 in RAM or a decoded cache on disk, bounded in
RAM, giving the very floats the float32 decoder gives; refusals name the figure and the flag; prefetch."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from recon3d.data import load_dataset
from recon3d.data.image_store import GIB, ImageStore
from recon3d.errors import InputError
from recon3d.train.config import apply_overrides, load_preset
from recon3d.train.synthetic import make_synthetic_data, write_blender
from recon3d.train.views import TrainViews


@pytest.fixture(scope="module")
def rgba_data(tmp_path_factory) -> tuple:
    """A Blender data set whose PNGs carry a varied alpha (composited on white by the reader), with masks."""
    root = tmp_path_factory.mktemp("scale")
    synthetic = make_synthetic_data(root / "src", num_views=6, size=24, backend="reference")
    blender = write_blender(synthetic, root / "blender")
    rng = np.random.default_rng(0)
    masks = root / "masks"
    masks.mkdir()
    for png in sorted(blender.glob("*/*.png")):
        rgb = np.asarray(Image.open(png).convert("RGB"))
        alpha = rng.integers(0, 256, rgb.shape[:2], dtype=np.uint8)
        Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(png)
        keep = (rng.random(rgb.shape[:2]) > 0.3).astype(np.uint8) * 255
        Image.fromarray(keep).save(masks / png.name)
    return blender, masks


def test_store_gives_the_decoders_floats_in_ram_and_on_disk(rgba_data, tmp_path):
    blender, masks = rgba_data
    data = load_dataset(blender, masks=masks)
    assert data.background is not None  # RGBA data
    indices = list(range(len(data)))
    ram = ImageStore(data, indices, budget_bytes=GIB, mode="ram")
    disk = ImageStore(data, indices, budget_bytes=0, mode="disk", cache_dir=tmp_path / "cache")
    for i in indices:
        expected, alpha, mask = data.load_image(i), data.load_alpha(i), data.load_mask(i)
        for store in (ram, disk):
            got = store.floats(i, torch.device("cpu"))
            assert torch.equal(got.image, expected)  # bit-identical: same bytes, same compositing formula
            assert torch.equal(got.alpha[..., 0], alpha)
            assert torch.equal(got.mask[..., 0], mask)
    assert ram.mode == "ram" and disk.mode == "disk"
    assert disk._ram_bytes == 0 and disk.peak_ram_bytes == 0  # a zero budget keeps nothing in memory
    assert len(list((tmp_path / "cache").glob("*.u8"))) == len(indices)
    again = ImageStore(data, indices, budget_bytes=0, mode="disk", cache_dir=tmp_path / "cache")
    for i in indices:
        assert torch.equal(again.floats(i, torch.device("cpu")).image, data.load_image(i))
    assert again.decoded == 0 and again.disk_reads == len(indices)  # the cache of the first store was reused


def test_float_mode_keeps_the_decoders_floats_exactly_even_when_resized(rgba_data, tmp_path):
    blender, masks = rgba_data
    data = load_dataset(blender, masks=masks, downscale=2)  # resized on load: uint8 would round these floats
    indices = list(range(len(data)))
    train = data.train_indices()
    store = ImageStore(data, indices, budget_bytes=GIB, mode="auto", train_indices=train)
    assert store.mode == "float"  # the training views fit the budget as float32
    u8 = ImageStore(data, indices, budget_bytes=GIB, mode="ram")
    for i in indices:
        got = store.floats(i, torch.device("cpu"))
        assert torch.equal(got.image, data.load_image(i))  # train and held-out views alike
        assert torch.equal(got.alpha[..., 0], data.load_alpha(i))
        assert torch.equal(got.mask[..., 0], data.load_mask(i))
        rounded = u8.floats(i, torch.device("cpu")).image
        # uint8: colour and alpha each rounded by half a step; composited, ≤ 0.5/255 + 0.5/255·|colour − bg|
        assert float((rounded - data.load_image(i)).abs().max()) <= 1 / 255 + 1e-6
    assert store.floats(train[0], torch.device("cpu")) is store.floats(train[0], torch.device("cpu"))  # made once
    assert store.decoded == len(indices) and not store._ram  # nothing kept twice as uint8
    per_view = 4 * (3 + 1 + 1) * int(data.cameras.height[0]) * int(data.cameras.width[0])
    assert store.float_bytes == per_view * len(train)
    with pytest.raises(InputError, match=r"as float32, more than the image cache's.*--image-cache-gb or use --image-cache ram"):
        ImageStore(data, indices, budget_bytes=per_view, mode="float", train_indices=train)
    small = ImageStore(data, indices, budget_bytes=store.float_bytes - 1, mode="auto", train_indices=train)
    assert small.mode == "ram"  # one byte short as floats: uint8 in memory


def test_store_bounds_its_memory_and_keeps_the_recent_views(rgba_data, tmp_path):
    data = load_dataset(rgba_data[0])
    indices = list(range(len(data)))
    one = 24 * 24 * 4  # colour + alpha bytes of one view
    store = ImageStore(data, indices, budget_bytes=2 * one + 10, mode="auto", cache_dir=tmp_path / "c")
    assert store.mode == "disk"  # the capture does not fit the budget
    for _ in range(2):
        for i in indices:
            store.get(i)
            assert store._ram_bytes <= store.budget
    assert list(store._ram) == indices[-2:]  # least recently used went first
    assert store.peak_ram_bytes <= store.budget
    store.remove_cache()
    assert not (tmp_path / "c").exists()


def test_a_capture_that_does_not_fit_is_refused_with_the_figure_and_the_flag(rgba_data, tmp_path, monkeypatch):
    data = load_dataset(rgba_data[0])
    with pytest.raises(InputError, match=r"need 0\.00 GB in memory as uint8.*--image-cache-gb or use --image-cache disk"):
        ImageStore(data, list(range(len(data))), budget_bytes=100, mode="ram")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10, 10, 0))
    with pytest.raises(InputError, match=r"free on this disk.*raise --image-cache-gb"):
        ImageStore(data, list(range(len(data))), budget_bytes=100, mode="auto", cache_dir=tmp_path / "c")


def test_train_views_prefetch_and_serve_the_same_floats(rgba_data, tmp_path):
    blender, masks = rgba_data
    data = load_dataset(blender, masks=masks)
    cfg = apply_overrides(load_preset("fast"), {"data.image_cache_gb": 0.0, "data.image_cache": "disk"})
    idx = data.train_indices()
    views = TrainViews.load(data, data.cameras, idx, cfg, torch.device("cpu"), cache_dir=tmp_path / "cache")
    try:
        views.prefetch(idx[:3])
        for i in idx:
            got = views.view(i)
            assert torch.equal(got.image, data.load_image(i))
            assert torch.equal(got.mask[..., 0], data.load_mask(i))
        assert not views._pending
        assert set(views.images) == set(idx) and len(views.masks) == len(idx)
        assert torch.equal(views.images[idx[0]], data.load_image(idx[0]))
    finally:
        views.close()


def test_synthetic_data_store_round_trip(tmp_path):
    data = make_synthetic_data(tmp_path / "d", num_views=4, size=16, backend="reference")
    store = ImageStore(data, [0, 1, 2, 3], budget_bytes=GIB)
    for i in range(4):
        assert torch.equal(store.floats(i, torch.device("cpu")).image, data.images[i])


def test_reconstruct_flags_reach_the_config(tmp_path):
    from recon3d.cli import build_parser
    from recon3d.commands.reconstruct import _FLAG_KEYS

    args = build_parser().parse_args(["reconstruct", str(tmp_path), "-o", str(tmp_path / "r"),
                                      "--image-cache", "disk", "--image-cache-gb", "1.5"])
    overrides = {key: getattr(args, flag) for flag, key in _FLAG_KEYS.items() if getattr(args, flag) is not None}
    cfg = apply_overrides(load_preset("fast"), overrides)
    assert (cfg.data.image_cache, cfg.data.image_cache_gb) == ("disk", 1.5)
    with pytest.raises(InputError, match="image_cache_gb"):
        apply_overrides(cfg, {"data.image_cache_gb": -1.0})
