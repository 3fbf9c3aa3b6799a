"""Image decoding: EXIF rotation, grayscale, 16-bit, RGBA, corrupt files, resizing, caching, backgrounds."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from recon3d.data.images import decode_image, parse_background, probe_image, resize_image
from recon3d.errors import InputError


def _gradient(w: int, h: int) -> np.ndarray:
    x = np.linspace(0, 255, w)[None, :].repeat(h, 0)
    y = np.linspace(0, 255, h)[:, None].repeat(w, 1)
    return np.stack([x, y, 255 - x], -1).astype(np.uint8)


def test_rgb_png_exact(tmp_path):
    arr = _gradient(20, 10)
    Image.fromarray(arr).save(tmp_path / "a.png")
    rgb, alpha = decode_image(tmp_path / "a.png")
    assert alpha is None and rgb.dtype == torch.float32 and rgb.shape == (10, 20, 3)
    assert torch.allclose(rgb, torch.from_numpy(arr).float() / 255)


def test_exif_rotation_honoured_or_ignored(tmp_path):
    arr = _gradient(30, 20)  # stored landscape
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    Image.fromarray(arr).save(tmp_path / "r.jpg", exif=exif, quality=100)
    assert probe_image(tmp_path / "r.jpg").width == 20 and probe_image(tmp_path / "r.jpg").height == 30
    shown, _ = decode_image(tmp_path / "r.jpg", exif=True)
    raw, _ = decode_image(tmp_path / "r.jpg", exif=False)
    assert shown.shape == (30, 20, 3) and raw.shape == (20, 30, 3)
    # orientation 6 displays the stored image rotated 90° clockwise: np.rot90 with k=-1
    assert torch.allclose(shown, torch.from_numpy(np.rot90(raw.numpy(), k=-1).copy()), atol=1e-6)


def test_grayscale_becomes_rgb(tmp_path):
    gray = np.arange(12 * 8, dtype=np.uint8).reshape(8, 12) * 2
    Image.fromarray(gray, mode="L").save(tmp_path / "g.png")
    rgb, _ = decode_image(tmp_path / "g.png")
    assert rgb.shape == (8, 12, 3)
    for c in range(3):
        assert torch.allclose(rgb[..., c], torch.from_numpy(gray).float() / 255)


def test_16bit_png_scaled_to_unit_range(tmp_path):
    values = np.array([[0, 1000, 32768, 65535]], dtype=np.uint16).repeat(3, 0)
    Image.fromarray(values).save(tmp_path / "d.png")  # mode I;16
    rgb, _ = decode_image(tmp_path / "d.png")
    expected = torch.from_numpy(values.astype(np.float32) / 65535.0)
    assert rgb.shape == (3, 4, 3)
    assert torch.allclose(rgb[..., 1], expected, atol=1e-6)
    assert float(rgb.max()) == pytest.approx(1.0) and float(rgb.min()) == 0.0


def test_rgba_composited_on_background(tmp_path):
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., 0] = 255  # pure red
    rgba[..., 3] = np.array([0, 64, 128, 255], dtype=np.uint8)[None, :]
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "t.png")
    a = rgba[..., 3].astype(np.float32) / 255
    for bg in ((1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (0.2, 0.4, 0.6)):
        rgb, alpha = decode_image(tmp_path / "t.png", background=torch.tensor(bg))
        assert torch.allclose(alpha, torch.from_numpy(a))
        exp_r = a * 1.0 + (1 - a) * bg[0]
        exp_g = (1 - a) * bg[1]
        assert np.allclose(rgb[..., 0].numpy(), exp_r, atol=1e-6)
        assert np.allclose(rgb[..., 1].numpy(), exp_g, atol=1e-6)


def test_palette_with_transparency_has_alpha(tmp_path):
    im = Image.new("P", (4, 4), 1)
    im.putpalette([0, 0, 0, 255, 0, 0] + [0] * (256 * 3 - 6))
    im.info["transparency"] = 0
    im.putpixel((0, 0), 0)
    im.save(tmp_path / "p.png", transparency=0)
    assert probe_image(tmp_path / "p.png").has_alpha
    rgb, alpha = decode_image(tmp_path / "p.png", background=torch.tensor([0.0, 1.0, 0.0]))
    assert float(alpha[0, 0]) == 0.0 and rgb[0, 0].tolist() == [0.0, 1.0, 0.0]
    assert rgb[1, 1].tolist() == [1.0, 0.0, 0.0]


def test_truncated_jpeg_names_the_file(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(_gradient(64, 64)).save(buf, format="JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(InputError) as e:
        decode_image(path)
    assert e.value.path == path and "truncated or corrupt" in str(e.value)
    assert str(e.value).startswith(str(path))


def test_corrupt_png_and_not_an_image(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(_gradient(16, 16)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    data[60:80] = b"\xff" * 20  # damage the compressed stream
    (tmp_path / "bad.png").write_bytes(bytes(data))
    with pytest.raises(InputError, match="bad.png: cannot decode image"):
        decode_image(tmp_path / "bad.png")
    (tmp_path / "text.jpg").write_text("hello, not a JPEG")
    with pytest.raises(InputError, match="text.jpg: not a readable image"):
        probe_image(tmp_path / "text.jpg")
    with pytest.raises(InputError, match="missing.png: image file does not exist"):
        decode_image(tmp_path / "missing.png")


def test_resize_matches_box_average_for_integer_factor():
    img = torch.rand(8, 12, 3)
    out = resize_image(img, (6, 4))
    ref = img.reshape(4, 2, 6, 2, 3).mean(dim=(1, 3))
    assert out.shape == (4, 6, 3)
    assert torch.allclose(out, ref, atol=1e-5)


def test_huge_jpeg_decoded_at_reduced_size(tmp_path):
    # 4000×3000 photo asked for at 400×300: draft decoding keeps memory small and the result right.
    big = np.zeros((3000, 4000, 3), dtype=np.uint8)
    big[:, :2000] = (200, 40, 40)
    big[:, 2000:] = (40, 40, 200)
    Image.fromarray(big).save(tmp_path / "big.jpg", quality=90)
    rgb, _ = decode_image(tmp_path / "big.jpg", size=(400, 300))
    assert rgb.shape == (300, 400, 3)
    assert np.allclose(rgb[150, 100].numpy(), np.array([200, 40, 40]) / 255, atol=0.03)
    assert np.allclose(rgb[150, 300].numpy(), np.array([40, 40, 200]) / 255, atol=0.03)


def test_parse_background():
    assert parse_background("white").tolist() == [1, 1, 1]
    assert parse_background("black").tolist() == [0, 0, 0]
    assert parse_background((255, 0, 0)).tolist() == [1, 0, 0]
    assert torch.allclose(parse_background("0.1 0.2 0.3"), torch.tensor([0.1, 0.2, 0.3]))
    for bad in ("purple", (1, 2), (float("nan"), 0, 0), (-1, 0, 0)):
        with pytest.raises(InputError):
            parse_background(bad)
