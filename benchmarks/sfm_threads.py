"""Photo-folder SfM: what one thread costs against pycolmap's default (every core), stage by stage.

    .venv/bin/python benchmarks/sfm_threads.py examples/garden/images ../shared/data/statue/images
    .venv/bin/python benchmarks/sfm_threads.py --pipeline ../shared/data/statue/images \
        --masks ../shared/data/statue/masks --out benchmarks/results/sfm_threads_statue_mapping.json
    .venv/bin/python benchmarks/sfm_threads.py --pipeline ../shared/data/fox/images \
        --out benchmarks/results/sfm_threads_fox_mapping.json

For each folder (photos as they are, no resizing: garden 320x240, statue 1200x800, fox 960x540): SIFT
extraction on one thread and on every core, each into its own database; the threaded one has its image ids
put back in name order (``recon3d.data.photos._renumber_images``) and the two databases must then hold the
same rows (cameras, frames, images, keypoints, descriptors). Then exhaustive matching once (seeded
verification, as recon3d does), and incremental mapping of copies of that one database with one thread and
with every core (``random_seed`` 0, the rest as ``recon3d.data.photos._map`` for folders up to
``EXHAUSTIVE_LIMIT``). Reports wall-clock and CPU seconds of each, the registered images and points, and
the md5 of each model's files (pycolmap's own defaults here, not recon3d's
preparation and masks: the statue registers nothing this way, so ``--pipeline`` measures mapping on recon3d's
own SfM of the folder). Results: ``benchmarks/results/sfm_threads.json`` with ``uptime`` at start
and end, and the core count: on a shared machine the wall-clock ratio is bounded by the free cores.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recon3d.data.photos import _renumber_images, _verification  # noqa: E402

TABLES = ("cameras", "rigs", "frames", "frame_data", "images", "keypoints", "descriptors", "pose_priors")


def _timed(fn) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return round(time.perf_counter() - wall, 2), round(time.process_time() - cpu, 2)


def _rows(db: Path) -> dict:
    con = sqlite3.connect(db)
    try:
        return {t: con.execute(f"SELECT * FROM {t} ORDER BY 1, 2").fetchall() for t in TABLES}
    finally:
        con.close()


def _extract(db: Path, folder: Path, names: list[str], threads: int) -> tuple[float, float]:
    import pycolmap

    reader = pycolmap.ImageReaderOptions()
    reader.camera_model = "SIMPLE_RADIAL"
    extraction = pycolmap.FeatureExtractionOptions()
    extraction.max_image_size = 3200
    extraction.num_threads = threads
    return _timed(lambda: pycolmap.extract_features(
        db, folder, image_names=names, camera_mode=pycolmap.CameraMode.SINGLE, reader_options=reader,
        extraction_options=extraction, device=pycolmap.Device.cpu,
    ))  # fmt: skip


def _map(db: Path, folder: Path, out: Path, threads: int) -> dict:
    import pycolmap

    options = pycolmap.IncrementalPipelineOptions()
    options.random_seed = 0
    options.num_threads = threads
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    recs: dict = {}
    wall, cpu = _timed(lambda: recs.update(pycolmap.incremental_mapping(db, folder, out, options=options)))
    best = max(recs.values(), key=lambda r: r.num_reg_images()) if recs else None
    md5 = {}
    if best is not None:
        (out / "best").mkdir()
        best.write(out / "best")
        md5 = {f.name: hashlib.md5(f.read_bytes()).hexdigest()[:8] for f in sorted((out / "best").glob("*.bin"))}
    return {"wall_s": wall, "cpu_s": cpu, "models": len(recs),
            "registered": best.num_reg_images() if best else 0,
            "points": best.num_points3D() if best else 0, "md5": md5}  # fmt: skip


def bench(folder: Path, scratch: Path) -> dict:
    """Extraction, matching and mapping of one folder, one thread against every core."""
    import pycolmap

    names = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    scratch.mkdir(parents=True, exist_ok=True)
    one, many = scratch / "one.db", scratch / "many.db"
    for db in (one, many):
        db.unlink(missing_ok=True)
    result: dict = {"folder": str(folder), "photos": len(names)}
    wall, cpu = _extract(one, folder, names, 1)
    result["extract_1_thread"] = {"wall_s": wall, "cpu_s": cpu}
    wall, cpu = _extract(many, folder, names, -1)
    con = sqlite3.connect(many)
    ids = [name for _, name in con.execute("SELECT image_id, name FROM images ORDER BY image_id")]
    con.close()
    result["extract_all_cores"] = {"wall_s": wall, "cpu_s": cpu,
                                   "ids_out_of_name_order": sum(a != b for a, b in zip(ids, names))}  # fmt: skip
    wall, cpu = _timed(lambda: _renumber_images(many, names))
    result["renumber"] = {"wall_s": wall, "cpu_s": cpu}
    result["databases_identical_after_renumbering"] = _rows(one) == _rows(many)
    wall, cpu = _timed(lambda: pycolmap.match_exhaustive(many, verification_options=_verification(),
                                                         device=pycolmap.Device.cpu))  # fmt: skip
    result["matching_all_cores"] = {"wall_s": wall, "cpu_s": cpu}
    for threads, key in ((1, "map_1_thread"), (-1, "map_all_cores")):
        copy = scratch / f"map_{key}.db"
        shutil.copy(many, copy)
        result[key] = _map(copy, folder, scratch / key, threads)
        print(key, result[key], flush=True)
    total_1 = result["extract_1_thread"]["wall_s"] + result["matching_all_cores"]["wall_s"] + result["map_1_thread"]["wall_s"]
    result["mapping_1_thread_extra_share_of_sfm"] = round(
        (result["map_1_thread"]["wall_s"] - result["map_all_cores"]["wall_s"]) / total_1, 3
    )
    return result


def bench_pipeline(folder: Path, scratch: Path, masks: Path | None, repeats: int) -> dict:
    """recon3d's own photo-folder SfM once (its stage times), then its mapping step (``photos._map``) again from
    that database, one thread and every core alternately, ``repeats`` times each."""
    from recon3d.data import load_dataset
    from recon3d.data.photos import _map
    from recon3d.data.scene_data import progress

    work = scratch / "pipeline"
    if work.exists():
        shutil.rmtree(work)
    load_dataset(folder, work_dir=work, masks=masks)
    sfm = work / "sfm"
    manifest = json.loads((sfm / "manifest.json").read_text())
    result: dict = {"folder": str(folder), "masks": str(masks) if masks else None,
                    "summary": manifest.get("summary"), "stages": manifest.get("stages"), "runs": []}  # fmt: skip
    n = len(manifest.get("registered", [0, 0])) and manifest["registered"][1]
    for rep in range(repeats):
        for one in ((True, False) if rep % 2 == 0 else (False, True)):
            copy = scratch / "map.db"
            shutil.copy(sfm / "database.db", copy)
            with progress() as bar:
                wall, cpu = time.perf_counter(), time.process_time()
                recs = _map(copy, sfm / "images", scratch / "mapper", n, False, bar, one)
                wall, cpu = round(time.perf_counter() - wall, 2), round(time.process_time() - cpu, 2)
            best = max(recs.values(), key=lambda r: r.num_reg_images())
            run = {"one_thread": one, "wall_s": wall, "cpu_s": cpu, "models": len(recs),
                   "registered": best.num_reg_images(), "points": best.num_points3D()}  # fmt: skip
            result["runs"].append(run)
            print(run, flush=True)
    for one in (True, False):
        runs = [r for r in result["runs"] if r["one_thread"] == one]
        result["map_1_thread" if one else "map_all_cores"] = {
            "mean_wall_s": round(sum(r["wall_s"] for r in runs) / len(runs), 2),
            "mean_cpu_s": round(sum(r["cpu_s"] for r in runs) / len(runs), 2),
        }
    total = sum(v["wall_s"] for v in (result["stages"] or {}).values())
    extra = result["map_1_thread"]["mean_wall_s"] - result["map_all_cores"]["mean_wall_s"]
    result["sfm_wall_s"] = round(total, 2)
    result["one_thread_mapping_extra_share_of_sfm"] = round(extra / total, 3) if total else None
    return result


def main() -> None:
    """Run the comparison on each folder given and write benchmarks/results/sfm_threads.json."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--pipeline", action="store_true",
                        help="recon3d's own SfM, then its mapping step on one thread vs every core")
    parser.add_argument("--masks", type=Path, default=None, help="with --pipeline: a mask folder (one folder only)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--scratch", type=Path, default=ROOT / "runs" / "sfm_threads")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "sfm_threads.json")
    args = parser.parse_args()
    uptime = lambda: subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()  # noqa: E731
    report = {"command": " ".join(sys.argv), "machine": platform.platform(), "cores": os.cpu_count(),
              "nice": os.nice(0), "uptime_start": uptime(), "results": []}  # fmt: skip
    for folder in args.folders:
        scratch = args.scratch / folder.parent.name
        if args.pipeline:
            report["results"].append(bench_pipeline(folder, scratch, args.masks, args.repeats))
        else:
            report["results"].append(bench(folder, scratch))
        print(json.dumps(report["results"][-1], indent=1), flush=True)
    report["uptime_end"] = uptime()
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
