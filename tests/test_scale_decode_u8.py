"""The uint8 decode path of the training image store (``images.decode_image_u8``, ``masks.load_mask_u8``,
``SceneData.decode_view_u8``): the very bytes the float path gives once rounded (``to_u8(decode_image(...))``),
8-bit images at their size packed straight from Pillow (no float round trip), everything else through the
float path; bad input named the same way."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import recon3d.data.images as images
from recon3d.data import load_dataset
from recon3d.data.image_store import GIB, ImageStore, _outside_heap
from recon3d.data.images import decode_image, decode_image_u8, to_u8
from recon3d.data.masks import load_mask, load_mask_u8
from recon3d.errors import InputError


def _texture(w: int, h: int, seed: int = 0) -> np.ndarray:
    """Gradients plus noise: every byte value, and JPEG blocks that do not compress to flat colour."""
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 255, w)[None, :].repeat(h, 0)
    y = np.linspace(0, 255, h)[:, None].repeat(w, 1)
    base = np.stack([x, y, 255 - x], -1) + rng.normal(0, 40, (h, w, 3))
    return base.clip(0, 255).astype(np.uint8)


class _Allocs:
    """``alloc`` for decode_image_u8 that records the sizes asked for (one block per image)."""

    def __init__(self) -> None:
        self.sizes: list[int] = []

    def __call__(self, nbytes: int) -> torch.Tensor:
        self.sizes.append(nbytes)
        return _outside_heap(nbytes)


def _no_floats(monkeypatch) -> None:
    """Make the float conversion fail: a case that must take the direct path proves it does."""
    def refuse(*_a, **_k):
        raise AssertionError("the uint8 path went through the floats")
    monkeypatch.setattr(images, "_to_float_array", refuse)


def _check(path: Path, *, size=None, exif=True, extra: int = 0) -> tuple[torch.Tensor, torch.Tensor | None]:
    """decode_image_u8 against to_u8 of decode_image's floats: same shapes, same bytes, one block."""
    rgb_f, alpha_f = decode_image(path, exif=exif, size=size)
    allocs = _Allocs()
    rgb, alpha, rest = decode_image_u8(path, allocs, exif=exif, size=size, extra_planes=extra)
    h, w = rgb_f.shape[:2]
    assert rgb.dtype == torch.uint8 and rgb.shape == (h, w, 3)
    assert torch.equal(rgb, to_u8(rgb_f))
    assert (alpha is None) == (alpha_f is None)
    if alpha is not None:
        assert alpha.shape == (h, w) and torch.equal(alpha, to_u8(alpha_f))
    assert allocs.sizes == [h * w * (3 + (alpha is not None) + extra)] and rest.numel() == h * w * extra
    return rgb, alpha


def test_to_u8_gives_back_every_byte():
    v = np.arange(256, dtype=np.uint8)
    floats = torch.from_numpy(v.astype(np.float32) / 255.0)  # what _to_float_array makes of an 8-bit file
    assert torch.equal(to_u8(floats), torch.from_numpy(v))


def test_jpeg_and_rgb_png_are_packed_directly(tmp_path, monkeypatch):
    arr = _texture(64, 48)
    Image.fromarray(arr).save(tmp_path / "a.jpg", quality=90)
    Image.fromarray(arr).save(tmp_path / "a.png")
    for name in ("a.jpg", "a.png"):
        # the independent reference: Pillow's own bytes of the decoded file
        with Image.open(tmp_path / name) as im:
            ref = torch.from_numpy(np.asarray(im.convert("RGB")).copy())
        with monkeypatch.context() as m:
            _no_floats(m)
            rgb, alpha, _ = decode_image_u8(tmp_path / name, _outside_heap, size=(64, 48))
        assert alpha is None and torch.equal(rgb, ref)
        _check(tmp_path / name, size=(64, 48))
        _check(tmp_path / name)  # no size: the file's own
    assert torch.equal(_check(tmp_path / "a.png")[0], torch.from_numpy(arr))  # PNG: lossless


def test_rgba_grayscale_and_palette(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    rgba = np.dstack([_texture(40, 30), rng.integers(0, 256, (30, 40), dtype=np.uint8)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "t.png")
    Image.fromarray(_texture(40, 30)[..., 0], "L").save(tmp_path / "g.png")
    Image.fromarray(np.dstack([_texture(40, 30)[..., 1], rgba[..., 3]]), "LA").save(tmp_path / "la.png")
    p = Image.fromarray(_texture(40, 30)).convert("P")
    p.save(tmp_path / "p.png", transparency=3)
    p.save(tmp_path / "p_opaque.png")
    with monkeypatch.context() as m:
        _no_floats(m)
        rgb, alpha, _ = decode_image_u8(tmp_path / "t.png", _outside_heap)
    assert torch.equal(rgb, torch.from_numpy(rgba[..., :3])) and torch.equal(alpha, torch.from_numpy(rgba[..., 3]))
    _check(tmp_path / "t.png", size=(40, 30))
    _check(tmp_path / "t.png", size=(40, 30), extra=1)
    for name in ("g.png", "la.png", "p.png", "p_opaque.png"):
        rgb, alpha = _check(tmp_path / name, size=(40, 30))
        assert (alpha is not None) == (name in ("la.png", "p.png"))


def test_exif_rotated_jpeg(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated 90° clockwise: width and height swap
    Image.fromarray(_texture(48, 32)).save(tmp_path / "r.jpg", exif=exif, quality=95)
    shown, _ = _check(tmp_path / "r.jpg", exif=True, size=(32, 48))
    raw, _ = _check(tmp_path / "r.jpg", exif=False, size=(48, 32))
    assert shown.shape == (48, 32, 3) and raw.shape == (32, 48, 3)
    assert torch.equal(shown, torch.from_numpy(np.rot90(raw.numpy(), k=-1).copy()))
    _check(tmp_path / "r.jpg", exif=True)


def test_16bit_png_takes_the_float_path(tmp_path):
    values = (np.arange(40 * 30, dtype=np.uint32).reshape(30, 40) * 53 % 65536).astype(np.uint16)
    Image.fromarray(values).save(tmp_path / "d.png")
    with Image.open(tmp_path / "d.png") as im:
        assert im.mode.startswith("I")  # 16-bit: no 8-bit bytes to pack
    rgb, _ = _check(tmp_path / "d.png", size=(40, 30))
    # independently: round(v / 65535 · 255), which is not v >> 8 (the bytes a naive 8-bit path would keep)
    ref = torch.from_numpy(np.round(values.astype(np.float64) / 65535 * 255).astype(np.uint8))
    assert torch.equal(rgb[..., 0], ref) and torch.equal(rgb[..., 2], ref)


def test_resized_views_take_the_float_path(tmp_path):
    rng = np.random.default_rng(2)
    rgba = np.dstack([_texture(64, 48), rng.integers(0, 256, (48, 64), dtype=np.uint8)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "t.png")
    Image.fromarray(rgba[..., :3]).save(tmp_path / "a.jpg", quality=90)
    for name in ("t.png", "a.jpg"):
        for size in ((32, 24), (16, 12), (50, 37), (80, 60)):  # box averages, antialiased and enlarged
            _check(tmp_path / name, size=size)
    big = _texture(800, 600)  # a JPEG libjpeg decodes at half scale (draft): packed directly at that size
    Image.fromarray(big).save(tmp_path / "big.jpg", quality=90)
    _check(tmp_path / "big.jpg", size=(400, 300))
    _check(tmp_path / "big.jpg", size=(300, 225))


def test_bad_input_names_the_file(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(_texture(64, 64)).save(buf, format="JPEG")
    (tmp_path / "cut.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (tmp_path / "text.png").write_text("not a PNG")
    for name in ("cut.jpg", "text.png", "missing.jpg"):
        with pytest.raises(InputError) as old:
            decode_image(tmp_path / name, size=(64, 64))
        with pytest.raises(InputError) as new:
            decode_image_u8(tmp_path / name, _outside_heap, size=(64, 64))
        assert str(new.value) == str(old.value) and str(new.value).startswith(str(tmp_path / name))
        assert "\n" not in str(new.value)


def test_masks_as_bytes(tmp_path, monkeypatch):
    rng = np.random.default_rng(3)
    keep = rng.integers(0, 256, (30, 40), dtype=np.uint8)
    keep[0, :4] = (127, 128, 0, 255)  # the threshold's two sides
    Image.fromarray(keep).save(tmp_path / "m.png")
    Image.fromarray(keep).save(tmp_path / "m.jpg", quality=80)
    Image.fromarray(keep[::2, ::2]).save(tmp_path / "half.png")  # stored at half size: resized
    rgba = np.dstack([np.full((30, 40, 3), 255, np.uint8), keep])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    Image.fromarray(keep.astype(np.uint16) * 257).save(tmp_path / "d.png")  # 16-bit
    for name in ("m.png", "m.jpg", "half.png", "a.png", "d.png"):
        out = _outside_heap(30 * 40)
        got = load_mask_u8(tmp_path / name, (40, 30), out)
        assert got.shape == (30, 40) and got.data_ptr() == out.data_ptr()  # written into the caller's bytes
        assert torch.equal(got, to_u8(load_mask(tmp_path / name, (40, 30))))
    assert torch.equal(load_mask_u8(tmp_path / "m.png", (40, 30), _outside_heap(1200)),
                       torch.from_numpy((keep >= 128).astype(np.uint8) * 255))
    assert load_mask_u8(tmp_path / "m.png", (40, 30), _outside_heap(1200))[0, :4].tolist() == [0, 255, 0, 255]


def _nerfstudio(root: Path, files: dict[str, Path | None]) -> Path:
    """A transforms.json over ``files`` (image name -> mask file or None), all 48×36."""
    frames = []
    for i, (name, mask) in enumerate(files.items()):
        pose = np.eye(4)
        pose[0, 3], pose[2, 3] = 0.3 * i, 3.0
        frame = {"file_path": f"images/{name}", "transform_matrix": pose.tolist()}
        if mask is not None:
            frame["mask_path"] = str(mask.relative_to(root))
        frames.append(frame)
    meta = {"camera_model": "PINHOLE", "fl_x": 40.0, "fl_y": 40.0, "cx": 24.0, "cy": 18.0, "w": 48, "h": 36,
            "frames": frames}
    (root / "transforms.json").write_text(json.dumps(meta))
    return root


def _old_path_bytes(data, index: int) -> tuple:
    """What the store kept before the uint8 path: to_u8 of decode_view's floats."""
    d = data.decode_view(index)
    return tuple(None if t is None else to_u8(t) for t in (d.rgb, d.alpha, d.mask))


def _assert_store_matches(data, tmp_path: Path) -> None:
    indices = list(range(len(data)))
    allocs = _Allocs()
    for i in indices:
        new = data.decode_view_u8(i, allocs)
        for got, want in zip(new, _old_path_bytes(data, i), strict=True):
            assert (got is None) == (want is None)
            if got is not None:
                assert torch.equal(got, want)
    assert len(allocs.sizes) == len(indices)  # colour, alpha and mask: one block per view
    for mode, budget in (("ram", GIB), ("disk", 0)):
        store = ImageStore(data, indices, budget_bytes=budget, mode=mode, cache_dir=tmp_path / f"cache-{mode}")
        for i in indices:
            got = store.floats(i, torch.device("cpu"))
            rgb, alpha, mask = _old_path_bytes(data, i)
            want = rgb.float() / 255
            if alpha is not None:
                want = images.composite(want, alpha.float() / 255, store._background(None))
            assert torch.equal(got.image, want)
            assert (got.alpha is None) == (alpha is None) and (got.mask is None) == (mask is None)
            if alpha is not None:
                assert torch.equal(got.alpha[..., 0], alpha.float() / 255)
            if mask is not None:
                assert torch.equal(got.mask[..., 0], data.load_mask(i))
        assert store.decoded == len(indices)


def test_masked_jpeg_views_through_the_store(tmp_path, monkeypatch):
    root = tmp_path / "ns"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(4)
    files: dict[str, Path | None] = {}
    for i, kind in enumerate(("L", "half", "RGBA", "16bit", None, "L")):
        Image.fromarray(_texture(48, 36, seed=i)).save(root / "images" / f"{i}.jpg", quality=92)
        keep = ((rng.random((36, 48)) > 0.3) * 255).astype(np.uint8)
        mask = root / "masks" / f"{i}.png"
        if kind == "L":
            Image.fromarray(keep).save(mask)
        elif kind == "half":
            Image.fromarray(keep[::2, ::2]).save(mask)
        elif kind == "RGBA":
            Image.fromarray(np.dstack([np.full((36, 48, 3), 255, np.uint8), keep]), "RGBA").save(mask)
        elif kind == "16bit":
            Image.fromarray(keep.astype(np.uint16) * 257).save(mask)
        files[f"{i}.jpg"] = mask if kind is not None else None
    _nerfstudio(root, files)
    data = load_dataset(root, work_dir=tmp_path / "work")
    assert data.has_masks and data.background is None
    _assert_store_matches(data, tmp_path / "full")
    with monkeypatch.context() as m:  # full-size JPEGs: not one float conversion of a colour image
        _no_floats(m)
        for i in range(len(data)):
            data.decode_view_u8(i, _outside_heap)
    _assert_store_matches(load_dataset(root, work_dir=tmp_path / "work2", downscale=2), tmp_path / "half")
    _assert_store_matches(load_dataset(root, work_dir=tmp_path / "work3", max_image_size=40), tmp_path / "cap")


def test_rgba_png_views_through_the_store(tmp_path):
    root = tmp_path / "ns"
    (root / "images").mkdir(parents=True)
    rng = np.random.default_rng(5)
    files: dict[str, Path | None] = {}
    for i in range(4):
        rgba = np.dstack([_texture(48, 36, seed=10 + i), rng.integers(0, 256, (36, 48), dtype=np.uint8)])
        Image.fromarray(rgba, "RGBA").save(root / "images" / f"{i}.png")
        files[f"{i}.png"] = None
    _nerfstudio(root, files)
    data = load_dataset(root, work_dir=tmp_path / "work")
    assert data.background is not None
    _assert_store_matches(data, tmp_path / "full")
    _assert_store_matches(load_dataset(root, work_dir=tmp_path / "work2", downscale=2), tmp_path / "half")
