"""Rasterizer benchmark: our ``cpu`` kernels vs the dense ``reference`` (and ``cuda``/``gsplat`` on a GPU).

Prints a table and writes JSON (default ``benchmarks/results/rasterize_cpu.json``): forward and
forward+backward milliseconds (median of repeats), peak memory, Gaussian-pixel pairs evaluated and
composited per second, and the measured coverage (Gaussians composited per pixel) of a fixed, seeded scene:
Gaussians on the surfaces of a few objects (sphere, torus, box) seen by a camera that frames them, SH degree 3.

On the CPU each repeat also times a 2048³ float32 matmul (torch.mm, same threads) right after the render,
and the table reports forward+backward ÷ matmul: a ratio that compares across machines and load (issue 17's
target is <= 0.22 at 100k/400²).

    .venv/bin/python benchmarks/rasterize.py                       # full grid
    .venv/bin/python benchmarks/rasterize.py --sizes 100000 --res 400 --backends cpu --repeats 15   # the target row
    .venv/bin/python benchmarks/rasterize.py --sizes 20000 --res 600x400 --backends cpu   # W x H
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import recon3d  # noqa: E402
from recon3d.io_utils import atomic_write_text  # noqa: E402


def surface_scene(n: int, seed: int = 0, device: str = "cpu") -> recon3d.GaussianScene:
    """N Gaussians on the surfaces of a sphere, a torus and a box (flat, surface-aligned, SH degree 3)."""
    g = torch.Generator().manual_seed(seed)
    parts = [n // 3, n // 3, n - 2 * (n // 3)]
    pts, normals = [], []
    # sphere of radius 0.6 at (-0.5, 0, 0)
    d = torch.randn(parts[0], 3, generator=g)
    d = d / d.norm(dim=-1, keepdim=True)
    pts.append(d * 0.6 + torch.tensor([-0.5, 0.0, 0.0]))
    normals.append(d)
    # torus (R=0.45, r=0.18) at (0.6, 0, 0.1), axis z
    u, v = torch.rand(parts[1], generator=g) * 2 * math.pi, torch.rand(parts[1], generator=g) * 2 * math.pi
    nrm = torch.stack([torch.cos(u) * torch.cos(v), torch.sin(u) * torch.cos(v), torch.sin(v)], -1)
    ctr = torch.stack([torch.cos(u) * 0.45, torch.sin(u) * 0.45, torch.zeros_like(u)], -1)
    pts.append(ctr + nrm * 0.18 + torch.tensor([0.6, 0.0, 0.1]))
    normals.append(nrm)
    # box 1.6 x 1.0 x 0.3 under them
    face = torch.randint(0, 6, (parts[2],), generator=g)
    q = torch.rand(parts[2], 3, generator=g) * 2 - 1
    half = torch.tensor([0.8 * 1.6, 0.5 * 1.6, 0.15])
    axis = face // 2
    sign = (face % 2).float() * 2 - 1
    q[torch.arange(parts[2]), axis] = sign
    nb = torch.zeros(parts[2], 3)
    nb[torch.arange(parts[2]), axis] = sign
    pts.append(q * half + torch.tensor([0.0, 0.0, -0.75]))
    normals.append(nb)
    means = torch.cat(pts)
    normal = torch.cat(normals)
    # flat Gaussians: the smallest axis along the normal; size so tens overlap per pixel at 100k
    area = 4 * math.pi * 0.36 + 4 * math.pi**2 * 0.45 * 0.18 + 2 * (2.56 * 1.6 + 2.56 * 0.3 + 1.6 * 0.3)
    sigma = math.sqrt(area / n) * 1.6
    scales = torch.log(torch.full((n, 3), sigma) * torch.exp(torch.randn(n, 3, generator=g) * 0.3))
    scales[:, 2] = math.log(sigma * 0.1)
    # quaternion rotating z onto the normal
    zaxis = torch.tensor([0.0, 0.0, 1.0]).expand_as(normal)
    axis_v = torch.linalg.cross(zaxis, normal)
    w = 1.0 + (normal * zaxis).sum(-1, keepdim=True)
    quats = torch.cat([w, axis_v], -1)
    flip = quats.norm(dim=-1) < 1e-6
    quats[flip] = torch.tensor([0.0, 1.0, 0.0, 0.0])
    colors = torch.rand(n, 3, generator=g)
    sh0 = recon3d.scene.rgb_to_sh0(colors)[:, None, :]
    shn = torch.randn(n, 15, 3, generator=g) * 0.1
    opac = torch.logit(torch.rand(n, generator=g) * 0.8 + 0.15)
    return recon3d.GaussianScene(means, scales, quats, opac, sh0, shn).to(device)


def parse_res(text: str) -> tuple[int, int]:
    """``400`` (square) or ``600x400`` (width x height) -> (width, height)."""
    parts = text.lower().split("x")
    try:
        if len(parts) == 1:
            return int(parts[0]), int(parts[0])
        if len(parts) == 2:
            return int(parts[0]), int(parts[1])
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"resolution {text!r}: expected N or WxH, e.g. 400 or 600x400")


def res_label(res: tuple[int, int]) -> str:
    """400² for square images, 600×400 otherwise."""
    return f"{res[0]}²" if res[0] == res[1] else f"{res[0]}×{res[1]}"


def _label(resolution: int | list[int]) -> str:
    return res_label((resolution, resolution) if isinstance(resolution, int) else tuple(resolution))


def benchmark_camera(res: int | tuple[int, int], device: str = "cpu") -> recon3d.Cameras:
    """A camera that frames the scene at res x res (or width x height)."""
    width, height = (res, res) if isinstance(res, int) else res
    return recon3d.Cameras.look_at((0.4, -3.0, 1.6), (0.05, 0.0, -0.2), (0.0, 0.0, 1.0), fov_x=0.75, width=width,
                                   height=height).to(device)


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def matmul_operands(size: int = 2048) -> tuple[torch.Tensor, torch.Tensor]:
    """Two seeded size x size float32 matrices for the calibration matmul."""
    g = torch.Generator().manual_seed(0)
    return torch.randn(size, size, generator=g), torch.randn(size, size, generator=g)


def time_matmul(operands: tuple[torch.Tensor, torch.Tensor]) -> float:
    """Milliseconds of one float32 matmul of the operands (torch.mm, torch's current thread count)."""
    t0 = time.perf_counter()
    torch.mm(*operands)
    return (time.perf_counter() - t0) * 1e3


def time_backend(scene, cams, backend: str, repeats: int, device: str, antialiased: bool = False,
                 matmul: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict:
    """Median forward and forward+backward times of one backend (in the anti-aliased mode when asked); with
    ``matmul`` operands, one matmul is timed after each repeat (same conditions) and the ratio reported."""
    bg = torch.ones(3, device=device)
    fwd, fb, mm = [], [], []
    mode = {"antialiased": True} if antialiased else {}  # the default call stays the plain one
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for rep in range(repeats + 1):  # the first run warms caches (and builds kernels) and is dropped
        s = scene.detach().requires_grad_()
        _sync(device)
        t0 = time.perf_counter()
        with torch.no_grad():
            recon3d.render(s, cams, background=bg, backend=backend, **mode)
        _sync(device)
        t1 = time.perf_counter()
        out = recon3d.render(s, cams, background=bg, backend=backend, **mode)
        loss = out.rgb.sum() + out.depth.mean()
        loss.backward()
        _sync(device)
        t2 = time.perf_counter()
        mm_ms = time_matmul(matmul) if matmul is not None else None
        if rep:
            fwd.append((t1 - t0) * 1e3)
            fb.append((t2 - t1) * 1e3)
            if mm_ms is not None:
                mm.append(mm_ms)
    peak = (
        torch.cuda.max_memory_allocated() / 2**20
        if device == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    entry = {
        "forward_ms": statistics.median(fwd),
        "forward_backward_ms": statistics.median(fb),
        "forward_ms_all": fwd,
        "forward_backward_ms_all": fb,
        "peak_memory_mib": peak,
        "peak_rss_growth_mib": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024,
    }
    if mm:
        entry["matmul_2048_ms"] = statistics.median(mm)
        entry["matmul_2048_ms_all"] = mm
        # median fwd+bwd over median matmul: the load-independent figure (issue 17: <= 0.22 at 100k/400²)
        entry["forward_backward_over_matmul"] = entry["forward_backward_ms"] / entry["matmul_2048_ms"]
        entry["forward_backward_over_matmul_per_repeat_median"] = statistics.median(a / b for a, b in zip(fb, mm))
    return entry


def scene_stats(scene, cams) -> dict:
    """Coverage and the number of Gaussian-pixel pairs each rasterizer evaluates, from the cpu kernels."""
    from recon3d.backends import kernels

    with torch.no_grad():
        out = kernels.render(scene.to("cpu"), cams.to("cpu"), torch.ones(1, 3).expand(len(cams), 3), scene.sh_degree,
                             "cpu", return_stats=True)
    visible = int((out.radii > 0).sum())
    h, w = cams.image_size()
    from recon3d.constants import TILE_SIZE

    ext = kernels.load_kernels()  # the tile-Gaussian intersections come from the binning itself
    viewmats = cams.world_to_camera.contiguous()
    intr = torch.stack([cams.fx, cams.fy, cams.cx, cams.cy], -1).contiguous()
    proj = ext.project_forward(scene.means, scene.scales, scene.quats, scene.opacities, scene.sh0, scene.shN,
                               viewmats, intr, cams.centers().contiguous(), w, h, scene.sh_degree,
                               torch.get_num_threads())
    ras = ext.rasterize_forward(*proj, torch.ones(len(cams), 3), w, h, torch.get_num_threads(), 0)
    tile_ranges = ras[7]
    intersections = int((tile_ranges[:, 1] - tile_ranges[:, 0]).sum())
    return {
        "visible_gaussians": visible,
        # Gaussian-pixel pairs actually composited (sum over pixels of the Gaussians blended into each)
        "composited_pairs": int(out.n_contrib.sum()),
        "mean_coverage": float(out.n_contrib.float().mean()),
        "coverage_p90": float(out.n_contrib.float().quantile(0.9)),
        "tile_intersections": intersections,
        "cpu_pairs": intersections * TILE_SIZE * TILE_SIZE,
        "reference_pairs": visible * h * w,
    }


def main() -> None:
    """Run the grid and write the table + JSON."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 500_000])
    parser.add_argument("--res", type=parse_res, nargs="+", default=[(256, 256), (400, 400), (800, 800)],
                        help="image sizes: N (square) or WxH")
    parser.add_argument("--backends", nargs="+", default=None, help="default: cpu reference (+ cuda gsplat on a GPU)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--reference-max-pairs", type=float, default=5e7,
                        help="skip the reference where visible Gaussians x pixels exceeds this: its autograd graph holds ~40 bytes "
                        "per pair (6.5e8 pairs, 10k at 256², needs ~25 GiB)")
    parser.add_argument("--calibration", default="10000:64",
                        help="N:res of an extra small row where the reference fits; its throughput estimates the rest")
    parser.add_argument("--antialiased", action="store_true", help="time render(antialiased=True) on every backend")
    parser.add_argument("--no-matmul", action="store_true", help="skip the 2048³ matmul timed after each cpu repeat")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    has_cuda = torch.cuda.is_available()
    backends = args.backends or (["cpu", "reference"] + (["cuda", "gsplat"] if has_cuda else []))
    out_path = args.out or ROOT / "benchmarks" / "results" / ("rasterize_gpu.json" if "cuda" in backends else "rasterize_cpu.json")
    load = os.getloadavg()
    meta = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "load_average_before": load,
        "uptime": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name() if has_cuda else None,
        "sh_degree": 3,
        "antialiased": args.antialiased,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
    }
    matmul = None if args.no_matmul else matmul_operands()
    rows = []
    try:
        from rich.console import Console
        from rich.progress import Progress

        console = Console()
        progress = Progress(console=console, transient=True)
    except ImportError:  # rich is a dependency; stay usable without it
        console, progress = None, None
    configs = [(n, res) for n in args.sizes for res in args.res]
    if args.calibration and "reference" in backends:
        cal_n, cal_res = args.calibration.split(":")
        configs.insert(0, (int(cal_n), parse_res(cal_res)))
    total = len(configs) * len(backends)
    task = progress.add_task("benchmark", total=total) if progress else None
    if progress:
        progress.start()
    try:
        scenes: dict[int, recon3d.GaussianScene] = {}
        for n, res in configs:
            if n not in scenes:
                scenes = {n: surface_scene(n)}  # one scene alive at a time
            scene = scenes[n]
            cams = benchmark_camera(res)
            stats = scene_stats(scene, cams)
            # square sizes keep the single-number "resolution" of earlier results
            row = {"gaussians": n, "resolution": res[0] if res[0] == res[1] else list(res), **stats, "backends": {}}
            for be in backends:
                device = "cuda" if be in ("cuda", "gsplat") else "cpu"
                entry: dict
                if be == "reference" and stats["reference_pairs"] > args.reference_max_pairs:
                    entry = {"skipped": f"{stats['reference_pairs']:.2e} Gaussian-pixel pairs: over the "
                             f"--reference-max-pairs {args.reference_max_pairs:.1e} limit (minutes and tens of GiB)"}
                else:
                    try:
                        reps = args.repeats if be != "reference" else 1
                        entry = time_backend(scene.to(device), cams.to(device), be, reps, device, args.antialiased,
                                             matmul if be == "cpu" else None)
                        pairs = stats["reference_pairs"] if be == "reference" else stats["cpu_pairs"]
                        entry["pairs_per_second_forward"] = pairs / (entry["forward_ms"] / 1e3)
                        entry["composited_pairs_per_second_forward"] = stats["composited_pairs"] / (entry["forward_ms"] / 1e3)
                        entry["composited_pairs_per_second_forward_backward"] = stats["composited_pairs"] / (
                            entry["forward_backward_ms"] / 1e3)
                    except Exception as exc:  # record and go on: one failing backend must not lose the rest
                        entry = {"skipped": f"{type(exc).__name__}: {exc}"}
                row["backends"][be] = entry
                if progress:
                    progress.advance(task)
            cpu, ref = row["backends"].get("cpu", {}), row["backends"].get("reference", {})
            if "forward_backward_ms" in cpu and "forward_backward_ms" in ref:
                row["speedup_cpu_vs_reference_fb"] = ref["forward_backward_ms"] / cpu["forward_backward_ms"]
            rows.append(row)
    finally:
        if progress:
            progress.stop()
    # Where the reference was skipped, estimate its time from its measured throughput (pairs per second,
    # forward+backward) on the largest configuration it ran; recorded as an estimate, never as a measurement.
    measured = [r for r in rows if "forward_backward_ms" in r["backends"].get("reference", {})]
    if measured:
        base = max(measured, key=lambda r: r["reference_pairs"])
        rate = base["reference_pairs"] / (base["backends"]["reference"]["forward_backward_ms"] / 1e3)
        for r in rows:
            ref = r["backends"].get("reference", {})
            if "skipped" in ref:
                ref["estimated_forward_backward_ms"] = r["reference_pairs"] / rate * 1e3
                ref["estimated_from"] = f"{base['gaussians']} Gaussians at {_label(base['resolution'])}"
                cpu = r["backends"].get("cpu", {})
                if "forward_backward_ms" in cpu:
                    r["speedup_cpu_vs_reference_fb_estimated"] = ref["estimated_forward_backward_ms"] / cpu[
                        "forward_backward_ms"
                    ]
    meta["load_average_after"] = os.getloadavg()
    result = {"meta": meta, "rows": rows}
    out_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_path, json.dumps(result, indent=1))
    print(format_table(result))
    print(f"saved {out_path}")


def format_table(result: dict) -> str:
    """Markdown table of the results."""
    backends = sorted({b for r in result["rows"] for b in r["backends"]}, key=["cpu", "cuda", "gsplat", "reference"].index)
    head = "| N | res | coverage (mean/p90) | " + " | ".join(f"{b} fwd ms | {b} fwd+bwd ms" for b in backends)
    head += " | cpu Mpairs/s evaluated (fwd) | cpu Mpairs/s composited (fwd / fwd+bwd) | cpu fwd+bwd ÷ matmul | ref / cpu (fwd+bwd) |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in result["rows"]:
        cells = [f"{r['gaussians'] // 1000}k", _label(r['resolution']), f"{r['mean_coverage']:.1f} / {r['coverage_p90']:.0f}"]
        for b in backends:
            e = r["backends"][b]
            if "forward_ms" in e:
                cells += [f"{e['forward_ms']:.1f}", f"{e['forward_backward_ms']:.1f}"]
            elif "estimated_forward_backward_ms" in e:
                cells += ["skipped", f"~{e['estimated_forward_backward_ms'] / 1e3:.0f} s (est.)"]
            else:
                cells += ["skipped", "skipped"]
        cpu = r["backends"].get("cpu", {})
        cells.append(f"{cpu['pairs_per_second_forward'] / 1e6:.0f}" if "pairs_per_second_forward" in cpu else "-")
        cells.append(f"{cpu['composited_pairs_per_second_forward'] / 1e6:.0f} / "
                     f"{cpu['composited_pairs_per_second_forward_backward'] / 1e6:.0f}"
                     if "composited_pairs_per_second_forward" in cpu else "-")
        cells.append(f"{cpu['forward_backward_over_matmul']:.3f} (matmul {cpu['matmul_2048_ms']:.0f} ms)"
                     if "forward_backward_over_matmul" in cpu else "-")
        sp = r.get("speedup_cpu_vs_reference_fb")
        est = r.get("speedup_cpu_vs_reference_fb_estimated")
        cells.append(f"{sp:.0f}×" if sp else (f"~{est:.0f}× (est.)" if est else "-"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
