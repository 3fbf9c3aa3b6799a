"""Does a second entry point reuse the kernel build? Time the first render from two PATHs in turn.

The first process runs as an activated venv does (the venv's bin/ first on PATH), with an empty kernel cache,
so it builds; the second as ``make`` or ``.venv/bin/recon3d`` do (only the system folders, with
/usr/bin/ninja if the machine has one). Before recon3d.native, the two used different ninja versions and the
second rebuilt everything. Each process imports recon3d, renders two 32×32 views of a small scene and exits.

    .venv/bin/python benchmarks/build_reuse.py [--source CHECKOUT] [--label NAME]

``--source`` measures another checkout (e.g. an older commit unpacked with ``git archive``); the result is
appended to benchmarks/results/build_reuse.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_RENDER = """
import tempfile, time
t = time.monotonic()
from recon3d.train.synthetic import make_synthetic_data
with tempfile.TemporaryDirectory() as d:
    make_synthetic_data(d, num_views=2, size=32, num_gaussians=50, backend="cpu")
import recon3d
print(recon3d.__file__)
"""


def _objects(cache: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in cache.rglob("*.o")}


def main() -> int:
    """Measure and append one record to benchmarks/results/build_reuse.json."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=ROOT, help="checkout to import recon3d from")
    parser.add_argument("--label", default="current", help="name of this measurement")
    args = parser.parse_args()
    venv_bin = str(Path(sys.executable).parent)
    system_path = "/usr/local/bin:/usr/bin:/bin"
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache"
        env = {**os.environ, "PYTHONPATH": str(args.source.resolve()), "RECON3D_CACHE": str(cache),
               "TORCH_EXTENSIONS_DIR": str(cache / "kernels")}  # both old and new code honour the latter
        record: dict = {"label": args.label, "source": str(args.source.resolve()), "entry_points": []}
        for name, path in (("activated venv (first build)", f"{venv_bin}:{system_path}"),
                           ("make / .venv/bin/recon3d (second entry point)", system_path)):
            before = _objects(cache)
            t0 = time.monotonic()
            # run from the temporary folder: `python -c` puts the working directory first on sys.path
            proc = subprocess.run([sys.executable, "-c", _RENDER], env={**env, "PATH": path}, capture_output=True,
                                  text=True, timeout=3600, cwd=tmp)
            seconds = time.monotonic() - t0
            if proc.returncode != 0:
                print(proc.stderr[-3000:], file=sys.stderr)
                return 1
            module = proc.stdout.strip().splitlines()[-1]
            if not module.startswith(str(args.source.resolve())):
                print(f"imported recon3d from {module}, not from {args.source}", file=sys.stderr)
                return 1
            after = _objects(cache)
            rebuilt = sorted(Path(p).name for p in after if before.get(p) != after[p])
            record["entry_points"].append({"entry_point": name, "seconds": round(seconds, 1),
                                           "objects_compiled": rebuilt})
            print(f"{args.label}, {name}: first render {seconds:.1f} s, compiled {rebuilt or 'nothing'}", flush=True)
    record["date"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    record["load_average"] = os.getloadavg()
    record["cpus"] = os.cpu_count()
    out = ROOT / "benchmarks" / "results" / "build_reuse.json"
    records = json.loads(out.read_text()) if out.is_file() else []
    records.append(record)
    out.write_text(json.dumps(records, indent=1) + "\n")
    print(f"appended to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
