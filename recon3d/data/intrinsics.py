"""Per-photo intrinsics for photo collections taken with many cameras (or one zoom lens at many settings).

Structure from motion registers a photo folder with one shared SIMPLE_RADIAL camera when all photos have one
size: robust (every photo constrains one focal length), and right for a capture from one device. A
collection gathered from many cameras (Flickr photos of a landmark, cropped to one size) is not one camera:
the statue's 40 photos come from 4.3 mm phones to 300 mm telephotos, and a shared camera (focal 2,940 px,
radial k = -0.78) can only absorb a telephoto by moving the camera closer, which changes the perspective:
the photos then disagree about the object's shape, and the splats fit none of them (ghosts of the statue in
other places, training views at 18.6 dB).

``split_intrinsics`` therefore, after the shared-camera mapping, gives every image its own copy of the
shared camera (the seed: the mapping stays as robust as before) and bundle-adjusts the whole model with
each image's focal length and radial distortion free (principal points fixed at the centre, as a crop's is
unknown). ``camera_identities`` says when: the photos' EXIF (make, model, focal length) differ, or some
photos have EXIF and others have none.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

# BA iterations for the per-image refinement: the statue (40 photos, 3.2k points) gains 0.26 px of
# reprojection error in the first iterations and creeps afterwards (telephoto focal and distance trade off)
MAX_ITERATIONS = 40
# a per-image focal outside [seed / FOCAL_RANGE, seed * FOCAL_RANGE] is not trusted: that image keeps the seed
FOCAL_RANGE = 20.0
# the split is refused when the mean reprojection error rises by more than this factor
REJECT_RISE = 1.01


def camera_identities(paths: list[Path]) -> list[tuple | None]:
    """Each photo's EXIF camera: (make, model, focal length in mm), or None where the file has none."""
    from PIL import Image

    out: list[tuple | None] = []
    for p in paths:
        try:
            with Image.open(p) as im:
                exif = im.getexif()
                sub = exif.get_ifd(0x8769)
        except Exception:  # noqa: BLE001 -- unreadable EXIF is no EXIF (the image itself was checked already)
            out.append(None)
            continue
        make, model, focal = exif.get(271), exif.get(272), sub.get(37386)
        if make is None and model is None and focal is None:
            out.append(None)
            continue
        out.append((str(make or "").strip(), str(model or "").strip(),
                    None if focal is None else round(float(focal), 2)))  # fmt: skip
    return out


def several_cameras(paths: list[Path]) -> bool:
    """True when the photos' EXIF names more than one camera (make, model or focal length differ, or some
    photos have EXIF and some none); photos without any EXIF (renders, video frames) count as one camera."""
    ids = camera_identities(paths)
    if all(i is None for i in ids):
        return False
    return len(set(ids)) > 1


def split_intrinsics(model_dir: Path, max_iterations: int = MAX_ITERATIONS) -> dict | None:
    """Give every image of the shared-camera COLMAP model in ``model_dir`` its own camera (a copy of the
    shared one) and bundle-adjust focal lengths and distortion per image; rewrites the model in place.

    Returns what changed (focal range, reprojection error before and after), or None when the model has
    more than one camera already or the adjustment made it worse (the model is then left as it was).
    """
    import pycolmap

    model_dir = Path(model_dir)
    rec = pycolmap.Reconstruction(str(model_dir))
    if rec.num_cameras() != 1:
        return None
    work = model_dir.parent / (model_dir.name + ".per_image")
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    try:
        rec.write_text(str(work))
        for stale in ("rigs.txt", "frames.txt"):  # re-read without them: one trivial rig per camera
            (work / stale).unlink(missing_ok=True)
        shared = [ln for ln in (work / "cameras.txt").read_text().splitlines() if ln and not ln.startswith("#")]
        _, model, width, height, *params = shared[0].split()
        seed_focal = float(params[0])
        lines, cameras, k = [], [], 0
        for ln in (work / "images.txt").read_text().splitlines():
            if ln.startswith("#") or not ln.strip():
                if not ln.startswith("#"):
                    k += 1  # an image with no observations has an empty second line
                lines.append(ln)
                continue
            if k % 2 == 0:  # IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME
                fields = ln.split(" ")
                fields[8] = fields[0]
                cameras.append(" ".join([fields[0], model, width, height, *params]))
                ln = " ".join(fields)
            lines.append(ln)
            k += 1
        (work / "images.txt").write_text("\n".join(lines) + "\n")
        (work / "cameras.txt").write_text("\n".join(cameras) + "\n")
        split = pycolmap.Reconstruction(str(work))
        split.update_point_3d_errors()  # the stored errors may be stale
        before = split.compute_mean_reprojection_error()
        options = pycolmap.BundleAdjustmentOptions()
        options.refine_focal_length = True
        options.refine_extra_params = True
        options.refine_principal_point = False
        options.ceres.solver_options.max_num_iterations = max_iterations
        options.print_summary = False
        pycolmap.bundle_adjustment(split, options)
        split.update_point_3d_errors()
        after = split.compute_mean_reprojection_error()
        focals = np.array([float(c.params[0]) for c in split.cameras.values()])
        # the adjustment minimises a robust cost, so the plain mean error may rise by a hair while the fit
        # improves; only a real rise (> 1 %) means the split did harm (a fresh-clone CI run saw the split of
        # one true camera refused on such a hair, leaving the shared camera)
        if not np.isfinite(after) or after > before * REJECT_RISE or not np.all(np.isfinite(focals)):
            return None
        if np.any(focals > seed_focal * FOCAL_RANGE) or np.any(focals < seed_focal / FOCAL_RANGE):
            return None
        for stale in model_dir.iterdir():
            if stale.is_file():
                stale.unlink()
        split.write(str(model_dir))
        return {"cameras": int(split.num_cameras()), "seed_focal": seed_focal,
                "focal_min": float(focals.min()), "focal_median": float(np.median(focals)),
                "focal_max": float(focals.max()), "reprojection_error_before": float(before),
                "reprojection_error_after": float(after)}  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)
