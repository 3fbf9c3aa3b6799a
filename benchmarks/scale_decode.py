"""CPU time of one view decoded into the training image store: the uint8 path against the float path.

    python benchmarks/scale_decode.py                 # 50 views of benchmarks/scale.py's capture, 1 thread

The float path is what the store did before the uint8 path: ``decode_view`` (Pillow -> float32 /255 ->
torch), ``to_u8`` back to bytes, and a copy into the view's own mapping. The uint8 path packs Pillow's bytes
straight into that mapping (``SceneData.decode_view_u8``). Both run through ``ImageStore._decode`` itself
(its malloc_trim cadence included), alternating view by view on the same files (read once beforehand, so
both find them in the page cache); time.process_time per decode, one torch thread. The capture is the one
``benchmarks/scale.py`` makes (``--work``, default /tmp/recon3d-scale; made there if absent).

Then the per-step conversion of a held view to float32 (``image_store.to_float``, into a private anonymous
mapping) against the same conversion into a shared anonymous mapping (``mmap.mmap(-1, n)``'s default, what
``_outside_heap`` used before), alternating, on the decoded views.

Writes benchmarks/results/scale_decode.json (``--out``).
"""

from __future__ import annotations

import argparse
import gc
import json
import mmap
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from recon3d.data import load_dataset  # noqa: E402
from recon3d.data.image_store import GIB, ImageStore, to_float  # noqa: E402


def main() -> None:
    """Time both paths on the same views, print and save the figures."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, default=Path("/tmp/recon3d-scale"))
    p.add_argument("--views", type=int, default=50, help="views decoded by each path")
    p.add_argument("--rounds", type=int, default=2, help="passes over the views (each path, alternating)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "scale_decode.json")
    args = p.parse_args()
    torch.set_num_threads(1)
    if not (args.work / "transforms.json").is_file():
        from scale import make_capture  # benchmarks/scale.py: 600 views at 1600×1200

        make_capture(args.work, 600, 60, 1600, 1200)
    data = load_dataset(args.work, work_dir=args.work / "decode-work", test_every=0)
    indices = list(range(min(args.views, len(data))))
    for i in indices:  # into the page cache: both paths then read the files from memory
        Path(data.image_paths[i]).read_bytes()
    store = ImageStore(data, indices, budget_bytes=GIB, mode="ram")
    u8_path = type(data).decode_view_u8

    def decode(i: int, fast: bool) -> float:
        # the float path: the store finds no decode_view_u8 on the data (as before it existed)
        data.decode_view_u8 = (lambda j, alloc: u8_path(data, j, alloc)) if fast else None
        gc.collect()
        t0 = time.process_time()
        view = store._decode(i)
        dt = time.process_time() - t0
        del view
        return dt

    load_before = os.getloadavg()
    times: dict[str, list[float]] = {"float": [], "uint8": []}
    for r in range(args.rounds):
        for k, i in enumerate(indices):
            order = ("float", "uint8") if (k + r) % 2 == 0 else ("uint8", "float")
            for name in order:
                times[name].append(decode(i, name == "uint8"))
    del data.decode_view_u8

    def shared_float(u8: torch.Tensor) -> torch.Tensor:  # to_float as it was: a shared anonymous mapping
        n = 4 * u8.numel()
        out = torch.frombuffer(mmap.mmap(-1, n), dtype=torch.uint8, count=n).view(torch.float32).view(u8.shape)
        return out.copy_(u8).div_(255.0)

    cpu = torch.device("cpu")
    convert: dict[str, list[float]] = {"shared": [], "private": []}
    for r in range(args.rounds):
        for k, i in enumerate(indices):
            u8 = store.get(i).rgb
            order = ("shared", "private") if (k + r) % 2 == 0 else ("private", "shared")
            for name in order:
                gc.collect()
                t0 = time.process_time()
                out = shared_float(u8) if name == "shared" else to_float(u8, cpu)
                convert[name].append(time.process_time() - t0)
                del out
    assert torch.equal(shared_float(u8), to_float(u8, cpu))
    row = {name: {"mean_ms": round(1000 * statistics.fmean(t), 2), "median_ms": round(1000 * statistics.median(t), 2),
                  "decodes": len(t)} for name, t in times.items()}
    ratio = row["uint8"]["mean_ms"] / row["float"]["mean_ms"]
    conv = {name: {"mean_ms": round(1000 * statistics.fmean(t), 2), "median_ms": round(1000 * statistics.median(t), 2),
                   "conversions": len(t)} for name, t in convert.items()}
    h, w = int(data.cameras.height[0]), int(data.cameras.width[0])
    result = {"machine": f"{platform.node()} {os.cpu_count()} cores",
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "torch": torch.__version__,
              "size": [w, h], "format": Path(data.image_paths[0]).suffix, "threads": 1,
              "cpu_ms_per_decode": row, "uint8_over_float": round(ratio, 3),
              "cpu_ms_per_to_float": conv,
              "private_over_shared": round(conv["private"]["mean_ms"] / conv["shared"]["mean_ms"], 3),
              "loadavg_before_after": [list(load_before), list(os.getloadavg())],
              "command": " ".join([Path(sys.executable).name, *sys.argv])}
    for name, r in row.items():
        print(f"{name:>5} path: {r['mean_ms']:.2f} ms CPU per {w}×{h} decode (median {r['median_ms']:.2f}, "
              f"{r['decodes']} decodes)")
    print(f"uint8 / float: {ratio:.3f}")
    for name, r in conv.items():
        print(f"to_float into a {name} mapping: {r['mean_ms']:.2f} ms CPU per view (median {r['median_ms']:.2f})")
    print(f"private / shared: {result['private_over_shared']:.3f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
