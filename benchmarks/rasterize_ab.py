"""A/B of two builds of the CPU kernels in one process: the same scene, camera and thread count, calls
interleaved (A B, B A, A B, ...), so machine load hits both alike.

A is the kernel sources (``cuda/``) of a git ref (default ``main``), B those of this checkout. Each repeat
times a no-grad forward and a forward+backward (as ``benchmarks/rasterize.py`` does), a 2048³ float32 matmul
right after (the load-independent ratio), and the driver's own stages (``RECON3D_PROFILE=1`` lines captured
from stderr). Before timing, the two builds' images and gradients are compared bit for bit.

    nice -n 19 .venv/bin/python benchmarks/rasterize_ab.py --repeats 21            # 100k / 400², 1 thread
    nice -n 19 .venv/bin/python benchmarks/rasterize_ab.py --base HEAD~1 --n 20000 --res 600x400 --sh 0
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ["RECON3D_PROFILE"] = "1"  # read once by the drivers, before any build loads

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import rasterize as rb  # noqa: E402

import recon3d  # noqa: E402
from recon3d.backends import kernels  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def build_from(src_dir: Path):
    """The CPU kernels built from the sources in ``src_dir`` (a ``cuda/`` folder), cached like the real ones."""
    saved = kernels.kernel_source_dir
    kernels.kernel_source_dir = lambda: src_dir  # _build reads the folder through this name only
    try:
        return kernels._build(False)
    finally:
        kernels.kernel_source_dir = saved


def load_built(path: Path):
    """A kernels module from an already built ``recon3d_kernels_cpu_<key>.so`` (its module name is its stem)."""
    import importlib.machinery
    import importlib.util

    name = path.name.split(".")[0]
    loader = importlib.machinery.ExtensionFileLoader(name, str(path))
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(name, loader))
    loader.exec_module(module)
    return module


def export_ref(ref: str, dest: Path) -> Path:
    """``cuda/`` of a git ref extracted under ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "cuda"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest / "cuda"


class StderrCapture:
    """Collects what native code writes to fd 2 during a block (the drivers' RECON3D_PROFILE lines)."""

    def __enter__(self):
        sys.stderr.flush()
        self.tmp = tempfile.TemporaryFile(mode="w+b")
        self.saved = os.dup(2)
        os.dup2(self.tmp.fileno(), 2)
        return self

    def __exit__(self, *exc):
        sys.stderr.flush()
        os.dup2(self.saved, 2)
        os.close(self.saved)
        self.tmp.seek(0)
        self.text = self.tmp.read().decode(errors="replace")
        self.tmp.close()


def parse_stages(text: str, prefix: str) -> dict[str, float]:
    """Wall and CPU ms per driver stage (summed where a stage runs twice) from RECON3D_PROFILE lines."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 8 and parts[0] == "recon3d" and parts[3] == "ms":  # recon3d NAME x ms wall y ms cpu
            for key, value in ((f"{prefix}:{parts[1]}", parts[2]), (f"cpu.{prefix}:{parts[1]}", parts[5])):
                out[key] = out.get(key, 0.0) + float(value)
    return out


def one_repeat(scene, cams, bg, sh_degree: int, matmul) -> dict:
    """One no-grad forward, one forward+backward, one matmul: ms and driver stages."""
    s = scene.detach().requires_grad_()
    with StderrCapture() as cap_f:
        t0, c0 = time.perf_counter(), time.thread_time()
        with torch.no_grad():
            recon3d.render(s, cams, background=bg, backend="cpu", sh_degree=sh_degree)
        t1, c1 = time.perf_counter(), time.thread_time()
    with StderrCapture() as cap_b:
        t2, c2 = time.perf_counter(), time.thread_time()
        out = recon3d.render(s, cams, background=bg, backend="cpu", sh_degree=sh_degree)
        loss = out.rgb.sum() + out.depth.mean()
        loss.backward()
        t3, c3 = time.perf_counter(), time.thread_time()
    c4 = time.thread_time()
    mm = rb.time_matmul(matmul)
    mm_cpu = (time.thread_time() - c4) * 1e3
    # wall ms as benchmarks/rasterize.py reports them, and this thread's CPU ms (steadier on a shared
    # machine: time spent waiting for a core is not in it; 1 thread, so it is all the work)
    return {"forward_ms": (t1 - t0) * 1e3, "forward_backward_ms": (t3 - t2) * 1e3, "matmul_ms": mm,
            "cpu.forward_ms": (c1 - c0) * 1e3, "cpu.forward_backward_ms": (c3 - c2) * 1e3, "cpu.matmul_ms": mm_cpu,
            **parse_stages(cap_f.text, "fwd"), **parse_stages(cap_b.text, "fb")}


def compare(scene, cams, bg, sh_degree: int, mods) -> dict:
    """Largest differences between the two builds' images and gradients (0 everywhere: bit-identical)."""
    res = []
    for mod in mods:
        kernels._modules["cpu"] = mod
        s = scene.detach().requires_grad_()
        out = recon3d.render(s, cams, background=bg, backend="cpu", sh_degree=sh_degree)
        (out.rgb.sum() + out.depth.mean()).backward()
        res.append({"rgb": out.rgb.detach(), "alpha": out.alpha.detach(), "depth": out.depth.detach(),
                    **{f"grad_{k}": getattr(s, k).grad for k in ("means", "scales", "quats", "opacities", "sh0", "shN")}})
    return {k: {"max_abs_diff": float((res[0][k] - res[1][k]).abs().max()),
                "max_abs": float(res[0][k].abs().max())} for k in res[0]}


def main() -> None:
    """Build both, check parity, time interleaved repeats, print per-stage medians and ratios, write JSON."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", default="main", help="git ref whose cuda/ is build A (default main)")
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--res", type=rb.parse_res, default=(400, 400))
    ap.add_argument("--sh", type=int, default=3, help="SH degree rendered")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--a-so", type=Path, default=None, help="a built kernels .so to use as A instead of building --base")
    ap.add_argument("--b-so", type=Path, default=None, help="a built kernels .so to use as B instead of building cuda/")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    # a fixed folder (per ref) keeps the build cache key stable between runs
    ref_dir = args.base.replace("/", "_").replace("~", "-")
    if args.a_so:
        mod_a = load_built(args.a_so)
    else:
        mod_a = build_from(export_ref(args.base, Path(tempfile.gettempdir()) / f"recon3d_ab_{os.getuid()}_{ref_dir}"))
    mod_b = load_built(args.b_so) if args.b_so else build_from(ROOT / "cuda")
    mods = (mod_a, mod_b)
    scene = rb.surface_scene(args.n)
    cams = rb.benchmark_camera(args.res)
    bg = torch.ones(3)
    parity = compare(scene, cams, bg, args.sh, mods)
    matmul = rb.matmul_operands()
    runs: list[list[dict]] = [[], []]
    for rep in range(args.repeats + 1):
        order = (0, 1) if rep % 2 == 0 else (1, 0)
        for i in order:
            kernels._modules["cpu"] = mods[i]
            r = one_repeat(scene, cams, bg, args.sh, matmul)
            if rep:  # the first round warms caches
                runs[i].append(r)
    keys = sorted({k for rs in runs for r in rs for k in r})
    med = [{k: statistics.median(r[k] for r in rs if k in r) for k in keys} for rs in runs]
    for m, rs in zip(med, runs):
        m["fb_over_matmul_per_repeat"] = statistics.median(r["forward_backward_ms"] / r["matmul_ms"] for r in rs)
        m["cpu.fb_over_matmul_per_repeat"] = statistics.median(r["cpu.forward_backward_ms"] / r["cpu.matmul_ms"]
                                                               for r in rs)
    ratio_pairs = [a["forward_backward_ms"] / b["forward_backward_ms"] for a, b in zip(*runs)]
    cpu_pairs = [a["cpu.forward_backward_ms"] / b["cpu.forward_backward_ms"] for a, b in zip(*runs)]
    result = {
        "what": f"A/B in one process, calls interleaved; A = cuda/ of {args.base}, B = this checkout's cuda/",
        "base_ref": args.base,
        "a_so": str(args.a_so) if args.a_so else None, "b_so": str(args.b_so) if args.b_so else None,
        "base_commit": subprocess.run(["git", "-C", str(ROOT), "rev-parse", args.base], capture_output=True,
                                      text=True).stdout.strip(),
        "head_commit": subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True,
                                      text=True).stdout.strip(),
        "dirty": bool(subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "cuda"], capture_output=True,
                                     text=True).stdout.strip()),
        "gaussians": args.n, "resolution": list(args.res), "sh_degree": args.sh, "threads": args.threads,
        "repeats": args.repeats, "load_average": os.getloadavg(),
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "parity_a_vs_b": parity,
        "median_a": med[0], "median_b": med[1],
        "speedup_fb_median": med[0]["forward_backward_ms"] / med[1]["forward_backward_ms"],
        "speedup_fb_median_of_paired_ratios": statistics.median(ratio_pairs),
        "speedup_fb_cpu_time_median": med[0]["cpu.forward_backward_ms"] / med[1]["cpu.forward_backward_ms"],
        "speedup_fb_cpu_time_median_of_paired_ratios": statistics.median(cpu_pairs),
        "runs_a": runs[0], "runs_b": runs[1],
    }
    print("parity (max |A-B|): " + ", ".join(f"{k} {v['max_abs_diff']:.3g}" for k, v in parity.items()))
    print(f"{'median ms':32s} {'A':>9s} {'B':>9s} {'A/B':>7s}")
    for k in keys + ["fb_over_matmul_per_repeat", "cpu.fb_over_matmul_per_repeat"]:
        a, b = med[0][k], med[1][k]
        print(f"{k:32s} {a:9.2f} {b:9.2f} {a / b if b else float('nan'):7.3f}")
    print(f"fwd+bwd speedup A/B: wall {result['speedup_fb_median']:.3f} (median of paired ratios "
          f"{result['speedup_fb_median_of_paired_ratios']:.3f}), CPU time {result['speedup_fb_cpu_time_median']:.3f} "
          f"(paired {result['speedup_fb_cpu_time_median_of_paired_ratios']:.3f}), load {os.getloadavg()[0]:.1f}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
