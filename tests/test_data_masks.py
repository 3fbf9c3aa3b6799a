"""Masks (white = keep): matching by stem, sizes, decoding, nerfstudio mask_path, SfM features, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from recon3d.cli import main
from recon3d.data import load_dataset
from recon3d.data.masks import check_mask, find_masks, load_mask
from recon3d.errors import InputError


def _img(path: Path, w: int = 40, h: int = 30, value: int = 128) -> Path:
    Image.fromarray(np.full((h, w, 3), value, np.uint8)).save(path)
    return path


def _half_mask(path: Path, w: int = 40, h: int = 30, mode: str = "L") -> Path:
    """Left half black (ignore), right half white (keep)."""
    a = np.zeros((h, w), np.uint8)
    a[:, w // 2 :] = 255
    if mode == "RGB":
        a = np.repeat(a[..., None], 3, 2)
    Image.fromarray(a).save(path)
    return path


def test_find_masks_by_stem(tmp_path: Path):
    imgs = [_img(tmp_path / "a.jpg"), _img(tmp_path / "b.png"), _img(tmp_path / "c.jpeg")]
    md = tmp_path / "masks"
    md.mkdir()
    _half_mask(md / "a.png")
    _half_mask(md / "b.png.png")  # COLMAP's naming: the image's full name + .png
    _half_mask(md / "c.jpg")
    _half_mask(md / "unrelated.png")
    assert find_masks(md, imgs) == [md / "a.png", md / "b.png.png", md / "c.jpg"]


def test_missing_and_empty_mask_folders(tmp_path: Path):
    imgs = [_img(tmp_path / "a.jpg"), _img(tmp_path / "b.jpg")]
    md = tmp_path / "masks"
    with pytest.raises(InputError, match="mask folder does not exist") as e:
        find_masks(md, imgs)
    assert e.value.path == md
    md.mkdir()
    (md / "readme.txt").write_text("x")
    with pytest.raises(InputError, match=r"no mask images \(PNG/JPEG\) in this folder"):
        find_masks(md, imgs)
    _half_mask(md / "a.png")
    with pytest.raises(InputError, match=r"no mask for 1 of 2 images .*: b.jpg$"):
        find_masks(md, imgs)


def test_mask_sizes(tmp_path: Path):
    m = _half_mask(tmp_path / "m.png", 40, 30)
    check_mask(m, 40, 30, "a.jpg")
    check_mask(m, 80, 60, "a.jpg")  # a half-size mask of the same aspect ratio: resized with its image
    with pytest.raises(InputError, match=r"mask is 40×30 but its image a.jpg is 40×40") as e:
        check_mask(m, 40, 40, "a.jpg")
    assert e.value.path == m
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 10)
    with pytest.raises(InputError, match="not a readable mask image"):
        check_mask(broken, 40, 30, "a.jpg")


def test_load_mask_thresholds_and_resizes(tmp_path: Path):
    # a JPEG-saved mask (as the statue's) has ringing near the edge; it must come out exactly 0/1
    m = _half_mask(tmp_path / "m.jpg", 40, 30, mode="RGB")
    mask = load_mask(m, (40, 30))
    assert mask.dtype == torch.float32 and mask.shape == (30, 40)
    expected = torch.zeros(30, 40)
    expected[:, 20:] = 1
    assert torch.equal(mask, expected)
    assert torch.equal(load_mask(m, (20, 15)), expected[::2, ::2])
    # RGBA: the alpha channel is the mask when it varies
    rgba = np.zeros((30, 40, 4), np.uint8)
    rgba[..., :3] = 255
    rgba[:, 20:, 3] = 255
    Image.fromarray(rgba).save(tmp_path / "a.png")
    assert torch.equal(load_mask(tmp_path / "a.png", (40, 30)), expected)


def _transforms(folder: Path, frames: list[dict]) -> Path:
    meta = {"camera_model": "PINHOLE", "fl_x": 40.0, "fl_y": 40.0, "cx": 20.0, "cy": 15.0, "w": 40, "h": 30,
            "frames": frames}  # fmt: skip
    (folder / "transforms.json").write_text(json.dumps(meta))
    return folder / "transforms.json"


def _pose(x: float) -> list:
    m = np.eye(4)
    m[0, 3] = x
    m[2, 3] = 3.0
    return m.tolist()


def test_nerfstudio_mask_path(tmp_path: Path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    frames = []
    for i in range(3):
        _img(tmp_path / "images" / f"{i}.png")
        _half_mask(tmp_path / "masks" / f"{i}.png")
        frames.append({"file_path": f"images/{i}.png", "mask_path": f"masks/{i}.png", "transform_matrix": _pose(i)})
    _transforms(tmp_path, frames)
    data = load_dataset(tmp_path, work_dir=tmp_path / "work", downscale=2)
    assert data.has_masks
    mask = data.load_mask(1)
    assert mask.shape == (15, 20) and float(mask[:, :10].max()) == 0 and float(mask[:, 10:].min()) == 1
    # --masks replaces mask_path
    other = tmp_path / "other"
    other.mkdir()
    for i in range(3):
        Image.fromarray(np.full((30, 40), 255, np.uint8)).save(other / f"{i}.png")
    data = load_dataset(tmp_path, work_dir=tmp_path / "work", masks=other)
    assert float(data.load_mask(0).min()) == 1
    # a frame whose mask_path is missing: one error naming the file and frame
    frames[2]["mask_path"] = "masks/nope.png"
    _transforms(tmp_path, frames)
    with pytest.raises(InputError, match=r"frames\[2\]: mask_path 'masks/nope.png' does not exist"):
        load_dataset(tmp_path, work_dir=tmp_path / "work")


def test_unmasked_data_has_no_masks(tmp_path: Path):
    (tmp_path / "images").mkdir()
    frames = []
    for i in range(2):
        _img(tmp_path / "images" / f"{i}.png")
        frames.append({"file_path": f"images/{i}.png", "transform_matrix": _pose(i)})
    _transforms(tmp_path, frames)
    data = load_dataset(tmp_path, work_dir=tmp_path / "work")
    assert not data.has_masks and data.load_mask(0) is None


def test_mask_size_mismatch_in_a_data_set(tmp_path: Path):
    (tmp_path / "images").mkdir()
    md = tmp_path / "masks"
    md.mkdir()
    frames = []
    for i in range(2):
        _img(tmp_path / "images" / f"{i}.png")
        _half_mask(md / f"{i}.png", 40, 40 if i == 1 else 30)
        frames.append({"file_path": f"images/{i}.png", "transform_matrix": _pose(i)})
    _transforms(tmp_path, frames)
    with pytest.raises(InputError, match=r"1.png: mask is 40×40 but its image 1.png is 40×30"):
        load_dataset(tmp_path, work_dir=tmp_path / "work", masks=md)


def test_cli_mask_folder_without_masks_is_one_line(tmp_path: Path, project_root: Path, capsys):
    photos = tmp_path / "photos"
    shutil.copytree(project_root / "examples" / "garden" / "images", photos)
    empty = tmp_path / "masks"
    empty.mkdir()
    rc = main(["reconstruct", str(photos), "-o", str(tmp_path / "run"), "--masks", str(empty)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err == [f"error: {empty}: no mask images (PNG/JPEG) in this folder"]


@pytest.mark.slow
def test_photo_folder_masks_keep_features_out(tmp_path: Path, project_root: Path):
    """Photo folder + --masks: SfM finds no keypoint under black, and the data serves the masks (undistorted)."""
    import pycolmap

    photos = tmp_path / "photos"
    photos.mkdir()
    md = tmp_path / "masks"
    md.mkdir()
    for p in sorted((project_root / "examples" / "garden" / "images").iterdir())[:10]:
        shutil.copy(p, photos / p.name)
        _half_mask(md / (p.stem + ".png"), 320, 240)
    data = load_dataset(photos, work_dir=tmp_path / "work", masks=md)
    sfm = tmp_path / "work" / "sfm"
    assert sorted(p.name for p in (sfm / "masks").iterdir()) == sorted(p.name + ".png" for p in photos.iterdir())
    db = pycolmap.Database.open(str(sfm / "database.db"))
    xs = np.concatenate([np.asarray(db.read_keypoints(im.image_id))[:, 0] for im in db.read_all_images()])
    db.close()
    assert len(xs) > 1000
    assert float(xs.min()) >= 160 - 2.0  # keypoint x in pixels (COLMAP: pixel centres at +0.5); left half masked
    assert data.has_masks and len(data) >= 8
    m = data.load_mask(0)
    assert m.shape == (int(data.cameras.height[0]), int(data.cameras.width[0]))
    assert abs(float(m.mean()) - 0.5) < 0.03 and float(m[:, :150].max()) == 0 and float(m[:, 170:].min()) == 1


@pytest.mark.data
def test_statue_masks_white_is_the_statue(shared_data: Path):
    """The statue's masks are white on the statue (the part to keep): a minority of the frame, central."""
    statue = shared_data / "statue"
    images = sorted((statue / "images").iterdir())
    masks = find_masks(statue / "masks", images)
    assert len(masks) == len(images) == 40
    for img, m in list(zip(images, masks))[:5]:
        with Image.open(img) as im:
            w, h = im.size
        check_mask(m, w, h, img)
        mask = load_mask(m, (w, h))
        assert 0.1 < float(mask.mean()) < 0.5
        assert float(mask[h // 3 : 2 * h // 3, w // 3 : 2 * w // 3].mean()) > float(mask.mean())
