"""A bare folder of photos -> camera poses and sparse points by structure-from-motion (pycolmap, CPU).

Steps: scan the folder (non-images skipped and counted, unreadable images skipped and named), write a
prepared copy of each photo into ``work_dir/sfm/images/`` (EXIF rotation applied, grayscale/16-bit/RGBA
made 8-bit RGB, downscaled to the loading size), so that SfM and training see the very same pixels;
then SIFT extraction, matching (every pair up to ``EXHAUSTIVE_LIMIT`` photos; beyond it, and for video,
the pairs ``data/pairs.py`` chooses: neighbours in order plus look-alikes by a global descriptor),
incremental mapping, and the largest model saved as a normal COLMAP project (``work_dir/sfm/sparse/0`` +
``work_dir/sfm/images``). A ``manifest.json`` records what was prepared; a re-run with the same photos
and settings reuses the model.

Cameras: one shared SIMPLE_RADIAL camera when all photos have one size (one device, as nerfstudio's
``ns-process-data`` assumes); mixed sizes: every photo keeps its own size and aspect ratio (one factor
scales the whole set) and gets its own camera, hence its own intrinsics. One size but several cameras in
the photos' EXIF (a collection from many people): mapped with the shared camera, then every photo gets its
own focal length and distortion, bundle-adjusted from the shared camera (``data/intrinsics.py``).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError
from ..io_utils import atomic_open, atomic_write_text
from .images import decode_image, is_image_name, probe_image
from .intrinsics import several_cameras, split_intrinsics
from .scene_data import console, info, list_names, progress, warn

EXHAUSTIVE_LIMIT = 150
MIN_REGISTERED = 3
SFM_VERSION = 4  # 2: chosen pairs beyond the exhaustive limit, faster video features and mapping; 3: per-photo
# intrinsics for collections from several cameras (data/intrinsics.py); 4: photo folders give the same model
# on every run (image ids in name order after threaded extraction, one mapping thread, seeded two-view RANSAC)
EXTRACTION_BATCH = 8  # images per extraction call: a progress step without much per-call overhead


def scan_photo_folder(folder: Path) -> tuple[list[Path], int]:
    """JPEG/PNG files of ``folder`` (sorted) and the number of other files skipped."""
    if not folder.is_dir():
        raise InputError(folder, "no such folder")
    images, others = [], 0
    for p in sorted(folder.iterdir()):
        if p.name.startswith(".") or not p.is_file():
            continue
        if is_image_name(p):
            images.append(p)
        else:
            others += 1
    return images, others


def _prepare(folder: Path, images: list[Path], sfm_dir: Path, downscale: int, max_image_size: int,
             background: torch.Tensor, masks: dict[str, Path] | None = None) -> tuple[list[str], dict, bool]:  # fmt: skip
    """Validate and copy the photos (and their masks) at the loading size; returns names, manifest, reuse."""
    from .masks import check_mask, load_mask, save_mask
    from .scene_data import scale_factor

    sizes, usable, bad = [], [], []
    has_alpha = False
    for p in images:
        try:
            inf = probe_image(p, exif=True)
        except InputError as e:
            bad.append((p.name, e.problem))
            continue
        has_alpha |= inf.has_alpha
        if masks is not None:
            check_mask(masks[p.name], inf.width, inf.height, p)
        usable.append(p)
        sizes.append((inf.width, inf.height))
    if not usable:
        raise InputError(folder, f"none of the {len(images)} image files could be read")
    factor = scale_factor(sizes, downscale, max_image_size, folder)
    manifest = {
        "version": SFM_VERSION,
        "factor": factor,
        "background": background.tolist(),
        "has_alpha": has_alpha,
        "sources": [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in usable],
    }
    if masks is not None:
        manifest["masks"] = [[str(m.resolve()), m.stat().st_size, m.stat().st_mtime_ns]
                             for m in (masks[p.name] for p in usable)]  # fmt: skip
    old = _read_manifest(sfm_dir)
    img_dir = sfm_dir / "images"
    if old is not None and {k: old.get(k) for k in manifest} == manifest and old.get("prepared"):
        return old["prepared"], old, True
    for stale in (img_dir, sfm_dir / "masks"):
        if stale.exists():
            shutil.rmtree(stale)
    img_dir.mkdir(parents=True)
    prepared: list[str] = []
    prepared_sizes: list[list[int]] = []
    from PIL import Image

    with progress() as bar:
        task = bar.add_task("preparing photos", total=len(usable))
        for p, (w, h) in zip(usable, sizes):
            size = (max(1, round(w * factor)), max(1, round(h * factor)))
            try:
                rgb, _ = decode_image(p, exif=True, size=size, background=background)
            except InputError as e:
                bad.append((p.name, e.problem))
                bar.advance(task)
                continue
            name = p.stem + (".jpg" if p.suffix.lower() in (".jpg", ".jpeg") else ".png")
            if name in prepared:  # a.jpg and a.jpeg in one folder
                name = p.name + name[-4:]
            arr = (rgb.numpy() * 255.0 + 0.5).astype(np.uint8)
            with atomic_open(img_dir / name, "wb") as f:
                if name.endswith(".jpg"):
                    Image.fromarray(arr).save(f, format="JPEG", quality=95)
                else:
                    Image.fromarray(arr).save(f, format="PNG", compress_level=1)
            if masks is not None:  # COLMAP's convention: sfm/masks/NAME.png, black = no features there
                save_mask(sfm_dir / "masks" / (name + ".png"), load_mask(masks[p.name], size))
            prepared.append(name)
            prepared_sizes.append(list(size))
            bar.advance(task)
    if bad:
        names = [f"{n} ({prob})" for n, prob in bad]
        warn(f"{folder}: {len(bad)} unreadable image file(s) skipped: {list_names(names)}")
    manifest["prepared"] = prepared
    manifest["sizes"] = prepared_sizes
    manifest["skipped"] = [n for n, _ in bad]
    return prepared, manifest, False


def _sources(manifest: dict) -> list[str]:
    """The file names of the photos that were prepared (readable), in the manifest's order."""
    skipped = set(manifest.get("skipped") or [])
    return [name for name, *_ in manifest["sources"] if name not in skipped]


def _read_manifest(sfm_dir: Path) -> dict | None:
    try:
        m = json.loads((sfm_dir / "manifest.json").read_text())
        return m if isinstance(m, dict) else None
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def _quiet_colmap():
    """Silence COLMAP's glog chatter during a stage (our own progress display says what happens)."""
    import pycolmap

    old = pycolmap.logging.minloglevel
    pycolmap.logging.minloglevel = 2
    try:
        yield
    finally:
        pycolmap.logging.minloglevel = old


def run_sfm(
    folder: Path,
    work_dir: Path,
    *,
    downscale: int,
    max_image_size: int,
    background: torch.Tensor,
    mask_dir: Path | None = None,
    sequential: bool = False,
    advice: str = "",
    deterministic: bool = True,
) -> tuple[Path, bool]:
    """Structure-from-motion on a photo folder into ``work_dir/sfm``.

    ``mask_dir``: masks by file stem (white = keep), no features under black. ``sequential``: frames of a
    video, matched with their neighbours in name order plus loop-closure pairs (``data/pairs.py``).
    ``advice`` ends the messages about images that did not register. ``deterministic``: map a photo folder on
    one thread, so that the same photos give the same model on every run (video maps on every core).
    Returns the COLMAP project folder and whether any photo had alpha (composited onto ``background``).
    """
    images, others = scan_photo_folder(folder)
    if not images:
        raise InputError(folder, f"no JPEG/PNG images found ({others} other file(s) skipped)")
    if others:
        info(f"{folder}: skipped {others} file(s) that are not JPEG/PNG images")
    if len(images) < MIN_REGISTERED:
        raise InputError(
            folder,
            f"only {len(images)} image(s); structure-from-motion needs at least {MIN_REGISTERED} overlapping photos",
        )
    sfm_dir = Path(work_dir) / "sfm"
    sfm_dir.mkdir(parents=True, exist_ok=True)
    masks = None
    if mask_dir is not None:
        from .masks import find_masks

        masks = dict(zip((p.name for p in images), find_masks(Path(mask_dir), images)))
    prepared, manifest, reused = _prepare(folder, images, sfm_dir, downscale, max_image_size, background, masks)
    if len(prepared) < MIN_REGISTERED:
        raise InputError(
            folder, f"only {len(prepared)} readable image(s); structure-from-motion needs at least {MIN_REGISTERED}"
        )
    model_dir = sfm_dir / "sparse" / "0"
    if reused and manifest.get("summary") and (model_dir / "images.bin").is_file():
        info(f"reusing the structure-from-motion model in {sfm_dir} ({manifest['summary']})")
        return sfm_dir, bool(manifest.get("has_alpha"))

    db = sfm_dir / "database.db"
    for stale in (db, sfm_dir / "sparse", sfm_dir / "manifest.json"):
        if stale.is_dir():
            shutil.rmtree(stale)
        elif stale.exists():
            stale.unlink()
    img_dir = sfm_dir / "images"
    n = len(prepared)
    clock = _Stages()
    with _quiet_colmap(), progress() as bar:
        _extract(db, img_dir, prepared, manifest, masks is not None, sfm_dir, max_image_size, sequential, bar, clock)
        _match(db, prepared, sequential, bar, clock, manifest)
        with clock("mapping"):
            recs = _map(db, img_dir, sfm_dir / "mapper", n, sequential, bar, one_thread=deterministic)
    shutil.rmtree(sfm_dir / "mapper", ignore_errors=True)
    if not recs:
        raise InputError(
            folder,
            f"structure-from-motion registered 0 of {n} images (no initial pair found); "
            + (advice or "the photos need more overlap or texture"),
        )
    rec = max(recs.values(), key=lambda r: r.num_reg_images())
    n_reg = rec.num_reg_images()
    if n_reg < MIN_REGISTERED:
        raise InputError(
            folder,
            f"structure-from-motion registered only {n_reg} of {n} images; at least {MIN_REGISTERED} are needed"
            + (f"; {advice}" if advice else ""),
        )
    model_dir.mkdir(parents=True, exist_ok=True)
    rec.write(model_dir)
    error = rec.compute_mean_reprojection_error()
    split = None
    if rec.num_cameras() == 1 and not sequential and several_cameras([folder / name for name in _sources(manifest)]):
        # photos from several cameras (EXIF) mapped with one shared camera: each photo gets its own focal
        # length and distortion, seeded by the shared camera (data/intrinsics.py says why)
        with clock("per-photo intrinsics"), _quiet_colmap():
            split = split_intrinsics(model_dir)
        if split is not None:
            error = split["reprojection_error_after"]
            manifest["intrinsics"] = split
    summary = (
        f"{n_reg} of {n} images registered, {rec.num_points3D()} points, "
        f"mean reprojection error {error:.2f} px"
        + (f", per-photo intrinsics (EXIF names several cameras; focal {split['focal_min']:.0f}"
           f"-{split['focal_max']:.0f} px)" if split else "")
        + f", {clock.describe()}"
    )
    console.print(f"[bold]structure-from-motion:[/bold] {summary}; model in {model_dir}")
    if n_reg < n:
        names = sorted(set(prepared) - {rec.image(i).name for i in rec.reg_image_ids()})
        warn(f"{folder}: {n - n_reg} image(s) could not be registered and are left out: {list_names(names)}"
             + (f"; {advice}" if advice else ""))  # fmt: skip
    manifest["summary"] = summary
    manifest["registered"] = [n_reg, n]
    manifest["stages"] = clock.stages
    atomic_write_text(sfm_dir / "manifest.json", json.dumps(manifest, indent=1))
    return sfm_dir, bool(manifest.get("has_alpha"))


# SfM on video frames: many, small, overlapping. At most 4096 SIFT features a frame (CPU matching cost
# grows with the square of the count). SIFT's first octave at full size (0) rather than upsampled 2x (-1)
# when there are many frames (>= VIDEO_FULL_SIZE_MIN_FRAMES, so neighbours are close) of at least
# VIDEO_UPSAMPLE_BELOW pixels: on 60 frames of the 960x540 garden orbit (2.5 degrees apart) extraction,
# matching and mapping took 10 + 10 + 14 CPU s instead of 33 + 20 + 25 with 2048 upsampled features
# (/tmp profiling, session 8), all 60 registered either way (median camera error 0.045 % vs 0.024 % of the
# orbit radius); benchmarks/video.py sfm --compare measures the whole change. Few frames keep the upsampled
# octave: 12 frames 30 degrees apart registered 3 of 12 without it, 12 of 12 with it; so do small frames
# (the garden's texture at 320x180).
VIDEO_SIFT = {"max_num_features": 4096, "first_octave": 0}
VIDEO_UPSAMPLE_BELOW = 800  # longest side (pixels) under which video frames are upsampled for SIFT
VIDEO_FULL_SIZE_MIN_FRAMES = 50  # fewer frames than this are upsampled for SIFT (they overlap less)
# Mapping many images (video, or photos beyond EXHAUSTIVE_LIMIT): global bundle adjustment when the model
# has grown by half (pycolmap's default: by a tenth), and fewer Ceres iterations per adjustment; each new
# image still gets its local adjustment. On the same 60 garden frames (one database) mapping took 18 CPU s
# instead of 43, 60 of 60 registered, same camera error (median 0.018 % vs 0.020 % of the radius).
# pycolmap's global mapper took 69 CPU s on that database: slower here, so not used.
LARGE_MAPPER = {
    "ba_global_frames_ratio": 1.5,
    "ba_global_points_ratio": 1.5,
    "ba_global_max_num_iterations": 25,
    "ba_local_max_num_iterations": 15,
    "mapper.ba_global_ignore_redundant_points3D": True,
}
MATCH_CHUNKS = 10  # pair lists are matched in this many calls, so that the progress bar moves


class _Stages:
    """Wall-clock and CPU seconds (all threads of this process) of each SfM stage, for the manifest and benchmarks."""

    def __init__(self) -> None:
        self.stages: dict[str, dict[str, float]] = {}

    @contextlib.contextmanager
    def __call__(self, name: str):
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self.stages[name] = {"wall_s": round(time.perf_counter() - wall, 2),
                                 "cpu_s": round(time.process_time() - cpu, 2)}  # fmt: skip

    def describe(self) -> str:
        """'12.3 s (features 4.0 s, pairs 0.1 s, …)'."""
        total = sum(v["wall_s"] for v in self.stages.values())
        parts = ", ".join(f"{k} {v['wall_s']:.1f} s" for k, v in self.stages.items())
        return f"{total:.1f} s ({parts})"


def _extract(db: Path, img_dir: Path, names: list[str], manifest: dict, masked: bool, sfm_dir: Path,
             max_image_size: int, sequential: bool, bar, clock: _Stages) -> None:  # fmt: skip
    """SIFT features of every prepared image into the database, in batches (a progress step each)."""
    import pycolmap

    reader = pycolmap.ImageReaderOptions()
    reader.camera_model = "SIMPLE_RADIAL"
    if masked:
        reader.mask_path = str(sfm_dir / "masks")
    extraction = pycolmap.FeatureExtractionOptions()
    extraction.max_image_size = max(max_image_size or 0, 3200)
    sizes = manifest.get("sizes") or []
    if sequential:
        extraction.sift.max_num_features = VIDEO_SIFT["max_num_features"]
        small = not sizes or max(max(s) for s in sizes) < VIDEO_UPSAMPLE_BELOW
        few = len(names) < VIDEO_FULL_SIZE_MIN_FRAMES
        extraction.sift.first_octave = -1 if small or few else VIDEO_SIFT["first_octave"]
    # One shared camera when all photos have one size (one device, as nerfstudio's ns-process-data
    # assumes); otherwise a camera per image so each size gets its own intrinsics.
    mode = pycolmap.CameraMode.SINGLE if len({tuple(s) for s in sizes}) == 1 else pycolmap.CameraMode.PER_IMAGE
    n = len(names)
    with clock("features"):
        task = bar.add_task("1/3 SIFT features", total=n)
        step = max(EXTRACTION_BATCH, n // 10)
        for start in range(0, n, step):
            batch = names[start : start + step]
            if start > 0 and mode == pycolmap.CameraMode.SINGLE:
                # Later batches join the first batch's camera instead of starting a camera of their own.
                reader.existing_camera_id = 1
            pycolmap.extract_features(
                db, img_dir, image_names=batch, camera_mode=mode,
                reader_options=reader, extraction_options=extraction, device=pycolmap.Device.cpu,
            )  # fmt: skip
            bar.advance(task, len(batch))
        # Extraction runs on every core; images enter the database (and get their ids) in the order the
        # threads finish, and matching and mapping follow the ids, so the ids are put back in name order.
        _renumber_images(db, names)


def _renumber_images(db: Path, names: list[str]) -> None:
    """Give the database's images (and their one-image frames) ids 1..n in the order of ``names``.

    Threaded extraction numbers images in the order its threads finish: without this the same photos gave
    a different model on every run (garden: 3,085-3,111 points). The features are untouched; only ids move.
    """
    import sqlite3

    order = {name: i + 1 for i, name in enumerate(names)}
    con = sqlite3.connect(db)
    try:
        with con:
            rows = con.execute("SELECT image_id, name FROM images").fetchall()
            frames = con.execute("SELECT frame_id, data_id FROM frame_data WHERE sensor_type = 0").fetchall()
            frame_of = {data: frame for frame, data in frames}
            if sorted(order.get(name, 0) for _, name in rows) != list(range(1, len(names) + 1)) or (
                len(frame_of) != len(rows) or len({f for f, _ in frames}) != len(frames)
            ):
                raise InputError(db, "the feature database does not hold exactly one image and frame per photo")
            new = {old: order[name] for old, name in rows}
            if any(old != n or frame_of[old] != n for old, n in new.items()):
                shift = 1 + max(max(new), max(frame_of.values()))  # two passes, so that ids stay unique
                for image_map, frame_map in (
                    ({old: old + shift for old in new}, {frame_of[old]: frame_of[old] + shift for old in new}),
                    ({old + shift: n for old, n in new.items()}, {frame_of[old] + shift: n for old, n in new.items()}),
                ):  # fmt: skip
                    image_pairs = [(b, a) for a, b in image_map.items()]
                    for table in ("images", "keypoints", "descriptors"):
                        con.executemany(f"UPDATE {table} SET image_id = ? WHERE image_id = ?", image_pairs)
                    con.executemany("UPDATE frame_data SET data_id = ? WHERE data_id = ? AND sensor_type = 0", image_pairs)
                    con.executemany("UPDATE pose_priors SET corr_data_id = ? WHERE corr_data_id = ? AND corr_sensor_type = 0",
                                    image_pairs)  # fmt: skip
                    for table in ("frames", "frame_data"):
                        con.executemany(f"UPDATE {table} SET frame_id = ? WHERE frame_id = ?",
                                        [(b, a) for a, b in frame_map.items()])  # fmt: skip
            # pose priors (EXIF GPS / gravity) are numbered as the threads finish too: in order of their image
            priors = con.execute("SELECT pose_prior_id FROM pose_priors ORDER BY corr_sensor_type, corr_data_id")
            prior_map = {old: i + 1 for i, (old,) in enumerate(priors.fetchall())}
            shift = 1 + max(prior_map, default=0)
            for pairs in ([(old + shift, old) for old in prior_map], [(n, old + shift) for old, n in prior_map.items()]):
                con.executemany("UPDATE pose_priors SET pose_prior_id = ? WHERE pose_prior_id = ?", pairs)
    finally:
        con.close()


def _match(db: Path, names: list[str], sequential: bool, bar, clock: _Stages, manifest: dict) -> None:
    """Match the chosen pairs: every pair up to EXHAUSTIVE_LIMIT photos, else neighbours and look-alikes."""
    import pycolmap

    from . import pairs as pairing

    n = len(names)
    if not sequential and n <= EXHAUSTIVE_LIMIT:
        with clock("matching"):
            task = bar.add_task(f"2/3 matching (exhaustive, {n * (n - 1) // 2} pairs)", total=1)
            pycolmap.match_exhaustive(db, verification_options=_verification(), device=pycolmap.Device.cpu)
            bar.advance(task)
        manifest["pairs"] = {"exhaustive": n * (n - 1) // 2, "total": n * (n - 1) // 2}
        return
    with clock("pairs"):
        with pairing.single_thread_blas():
            desc = pairing.global_descriptors(pairing.read_descriptors(db, names))
        chosen, counts = pairing.choose_pairs(names, desc, sequential=sequential)
    manifest["pairs"] = counts
    how = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in counts.items() if k != "total")
    with clock("matching"):
        task = bar.add_task(f"2/3 matching ({len(chosen)} pairs: {how})", total=len(chosen))
        listing = db.parent / "pairs.txt"
        step = max(1, -(-len(chosen) // MATCH_CHUNKS))
        imported = pycolmap.ImportedPairingOptions()
        imported.match_list_path = str(listing)
        for start in range(0, len(chosen), step):
            pairing.write_pairs(listing, chosen[start : start + step])
            pycolmap.match_image_pairs(db, pairing_options=imported, verification_options=_verification(),
                                       device=pycolmap.Device.cpu)
            bar.advance(task, len(chosen[start : start + step]))
        pairing.write_pairs(listing, chosen)  # the whole list stays beside the database, for inspection


def _verification():
    """Two-view geometry options with a fixed RANSAC seed (pycolmap's default, -1, leaves each pair's random
    draws to whichever matching thread verifies it), so that the verified matches are the same on every run."""
    import pycolmap

    options = pycolmap.TwoViewGeometryOptions()
    options.ransac.random_seed = 0
    return options


def _map(db: Path, img_dir: Path, raw_dir: Path, n: int, sequential: bool, bar, one_thread: bool = True) -> dict:
    """Incremental mapping (pycolmap; LARGE_MAPPER for video and large sets), progress by image; its models.

    ``one_thread``: map on one thread (photo folders; video keeps the threads for speed). With two, the garden's
    photos relabelled as two cameras gave a second model in 3 runs of 11 from byte-identical databases.
    """
    import pycolmap

    task = bar.add_task("3/3 mapping (images registered)", total=n)
    options = pycolmap.IncrementalPipelineOptions()
    options.random_seed = 0
    if one_thread and not sequential:
        options.num_threads = 1
    if sequential or n > EXHAUSTIVE_LIMIT:
        for key, value in LARGE_MAPPER.items():
            *parents, leaf = key.split(".")
            target = options
            for name in parents:
                target = getattr(target, name)
            setattr(target, leaf, value)
    if raw_dir.exists():
        shutil.rmtree(raw_dir)
    raw_dir.mkdir()
    registered = [0]

    def on_image() -> None:
        registered[0] += 1
        bar.update(task, completed=min(n, registered[0] + 1))

    return pycolmap.incremental_mapping(
        db, img_dir, raw_dir, options=options,
        initial_image_pair_callback=lambda: bar.update(task, completed=2), next_image_callback=on_image,
    )  # fmt: skip
