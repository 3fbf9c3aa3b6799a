"""NeRF benchmarks (issue 20).

``speed``: samples per second through the field forward + backward (hash encoding, density and colour MLPs,
volume compositing, gradients into the table and the MLPs) with our native CPU kernels, against the same
field in PyTorch only, side by side in one process, same weights, same samples, same thread count, at the
trainer's batch (65,536 samples). Native arms: ``native_fused`` (our hash-encoding and compositing kernels
and the fused MLP, ``nerf.mlp=fused``) and ``native`` (the same kernels, PyTorch's MLP layers). Two
PyTorch-only arms: ``pytorch_fused`` (one gather over the whole table, as a careful PyTorch implementation
does it; the ratio is claimed against this one) and ``pytorch`` (the test oracle
``recon3d/nerf/reference.py``, a gather per level and corner: 128 dense table gradients, so a ratio against it
flatters the kernels). The arms take turns step by step; median of repeats, by wall clock and by this
process's CPU time (on a shared, loaded machine the CPU time of the one thread is the stable figure).

``train``: a ``recon3d reconstruct DATA --method nerf`` run with a time budget; its held-out figures.

    .venv/bin/python benchmarks/nerf.py speed --rays 1024 --samples 64 --threads 1
    .venv/bin/python benchmarks/nerf.py train ../shared/data/lego --minutes 10 --threads 2 --out /tmp/nerf_lego \
        --distill-seconds 120
    python benchmarks/nerf.py train ../shared/data/lego --minutes 2 --device cuda --out /tmp/nerf_lego_gpu \
        --json $OUT/nerf_lego_gpu.json          # the GPU check (benchmarks/gpu_check.sh): target >= 32 dB

``distill-ab``: distillation variants of one trained run, side by side: the field's renders of a subset of the
training views (every ``--every``-th, at ``--scale``) are made once (cached beside the run) and every variant
(``DistillOptions`` fields as JSON) fine-tunes against the same ones, then is evaluated on the held-out views.

    .venv/bin/python benchmarks/nerf.py distill-ab RUN --every 4 --scale 0.5 '{"steps": 0}' '{"steps": 50}' \
        '{"steps": 300}' '{"steps": 300, "sh_degree": 0}'

JSON goes to ``benchmarks/results/nerf_<what>.json`` (``--json`` to change), with the machine's load average:
figures from a loaded machine say so.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recon3d.io_utils import atomic_write_text  # noqa: E402
from recon3d.nerf import kernels, reference  # noqa: E402
from recon3d.nerf.field import NerfField  # noqa: E402
from recon3d.nerf.reference import HashGridSpec, level_rows  # noqa: E402


def machine() -> dict:
    """Where and under what load the figures were taken."""
    return {"platform": platform.platform(), "cpus": os.cpu_count(), "loadavg_1_5_15": list(os.getloadavg()),
            "torch": torch.__version__, "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
            "nice": os.nice(0), "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def fused_hash_encode(positions: torch.Tensor, table: torch.Tensor, spec: HashGridSpec) -> torch.Tensor:
    """The hash encoding as a well-written PyTorch-only implementation would do it: every level's 8 corner rows
    and trilinear weights computed without autograd, then ONE gather over the whole table (one dense gradient
    in the backward), not the reference's 128 gathers (16 levels × 8 corners, each its own dense gradient)."""
    pos = positions.clamp(0, 1)
    corners = torch.tensor([[(k >> d) & 1 for d in range(3)] for k in range(8)], device=pos.device)
    rows, weights = [], []
    with torch.no_grad():
        for level, res in enumerate(spec.resolutions):
            start, size = spec.offsets[level], spec.offsets[level + 1] - spec.offsets[level]
            p = pos * res
            cell = p.floor().clamp(max=res - 1)
            frac = p - cell
            rows.append(level_rows(cell.long()[:, None, :] + corners[None], res, size) + start)  # N×8
            weights.append(torch.where(corners[None].bool(), frac[:, None, :], 1 - frac[:, None, :]).prod(-1))
    rows_t = torch.stack(rows, 1)  # N×L×8
    w = torch.stack(weights, 1)
    return (table[rows_t] * w[..., None]).sum(2).reshape(len(pos), -1)


ENCODERS = {"native": kernels.hash_encode, "pytorch_fused": fused_hash_encode, "pytorch": reference.hash_encode}
# arm -> (hash encoding, MLPs): native_fused is the field with nerf.mlp=fused (recon3d/nerf/fused_mlp.py)
ARMS = {"native_fused": ("native", "fused"), "native": ("native", "torch"), "pytorch_fused": ("pytorch_fused", "torch"),
        "pytorch": ("pytorch", "torch")}


def _step(field: NerfField, u, dirs, t, dt, start, target, arm: str) -> None:
    """Field forward + compositing + backward, native or one of the PyTorch-only implementations."""
    from recon3d.nerf import fused_mlp
    from recon3d.sh import sh_basis

    encoder, mlp = ARMS[arm]
    composite = kernels.composite if encoder == "native" else reference.composite
    features = ENCODERS[encoder](u, field.table, field.spec)
    if mlp == "fused":  # the SH basis of the directions is made inside the fused kernel
        h0, logits = fused_mlp.field_mlp(field, features, dirs)
    else:
        h = field.density_mlp(features)
        h0, logits = h[:, 0], field.color_mlp(torch.cat([h[:, 1:], sh_basis(dirs, field.dir_degree)], -1))
    sigma = torch.exp(h0 - 1.0)  # the field's trunc_exp forward; its clamped backward is the same cost
    color = torch.sigmoid(logits)
    rgb, opacity, _, _ = composite(sigma, color, t, dt, start)
    loss = ((rgb + (1 - opacity)[:, None] - target) ** 2).mean()
    field.zero_grad(set_to_none=True)
    loss.backward()


def speed(args: argparse.Namespace) -> dict:
    """Samples/s of field forward+backward: native kernels vs the PyTorch reference."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    spec = HashGridSpec(args.levels, args.log2_table, 16, 2048)
    field = NerfField(spec, hidden=64)
    with torch.no_grad():  # a trained-looking table (not the near-zero start): same cost, realistic values
        field.table.uniform_(-0.1, 0.1)
    rays, per_ray = args.rays, args.samples
    n = rays * per_ray
    # samples along random rays through the unit cube (the packed layout the marcher produces)
    o = torch.rand(rays, 3) * 0.2 + 0.4
    d = torch.nn.functional.normalize(torch.randn(rays, 3), dim=-1)
    tt = torch.linspace(0, 0.35, per_ray)
    u = (o[:, None, :] + tt[None, :, None] * d[:, None, :]).reshape(n, 3).clamp(0, 1).contiguous()
    dirs = d[:, None, :].expand(rays, per_ray, 3).reshape(n, 3).contiguous()
    t = tt.repeat(rays).contiguous()
    dt = torch.full((n,), float(tt[1] - tt[0]))
    start = torch.arange(0, n + 1, per_ray, dtype=torch.int64)
    target = torch.rand(rays, 3)
    if not kernels.available():
        raise SystemExit(f"the native NeRF kernels did not build: {kernels.build_error()}")
    with torch.no_grad():  # the fused baseline must compute what the oracle computes
        err = float((fused_hash_encode(u, field.table, spec) - reference.hash_encode(u, field.table, spec)).abs().max())
    if err > 1e-5:
        raise SystemExit(f"the fused PyTorch hash encoding differs from the reference by {err}")
    from recon3d.nerf import fused_mlp

    if not fused_mlp.available():
        raise SystemExit(f"the fused MLP did not build: {fused_mlp.build_error()}")
    results = {}
    arms = ("native_fused", "native", "pytorch_fused") + (() if args.skip_naive else ("pytorch",))
    for name in arms:
        _step(field, u, dirs, t, dt, start, target, name)  # warm-up
    times = {name: [] for name in arms}
    cpu = {name: [] for name in arms}
    # the arms take turns, one step each per round, so a change of machine load (a shared machine) falls on
    # every arm alike instead of on whichever arm was running; the naive arm sits out every other round
    for rep in range(args.repeats):
        for name in arms:
            if name == "pytorch" and rep % 2:
                continue
            t0, c0 = time.perf_counter(), time.process_time()
            _step(field, u, dirs, t, dt, start, target, name)
            times[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    for name in arms:
        med, cmed = statistics.median(times[name]), statistics.median(cpu[name])
        results[name] = {"median_s": med, "samples_per_s": n / med, "times_s": times[name], "cpu_median_s": cmed,
                         "cpu_samples_per_s": n / cmed, "cpu_s": cpu[name]}
        print(f"{name:13s} {1000 * med:9.1f} ms  {n / med / 1e6:7.3f} M samples/s   (CPU time {1000 * cmed:8.1f} ms)")
    # the claim is made against the strongest PyTorch-only arm (the fused gather), not the naive oracle; wall
    # clock and, as the machine is shared, CPU time of this process (the same single thread for every arm)
    ratios = {}
    for mine in ("native_fused", "native"):
        for base in ("pytorch_fused", "pytorch"):
            if base in results:
                for clock in ("samples_per_s", "cpu_samples_per_s"):
                    ratios[f"{mine}_over_{base}" + ("_cpu" if clock.startswith("cpu") else "")] = \
                        results[mine][clock] / results[base][clock]
    for key, value in ratios.items():
        print(f"{key:40s} {value:6.1f}x")
    print(f"({n:,} samples, {spec.levels} levels x 2^{spec.log2_table}, {args.threads} thread(s))")
    return {"what": "field forward+backward samples/s", "samples": n, "rays": rays, "samples_per_ray": per_ray,
            "levels": spec.levels, "log2_table": spec.log2_table, "threads": args.threads, "repeats": args.repeats,
            "results": results, **ratios,
            # PyTorch's huge-page allocations (THP_MEM_ALLOC_ENABLE=1) change the cost of every fresh large
            # buffer (the 67 MB table gradient: 23 -> 7 ms CPU) in every arm alike
            "thp_mem_alloc": os.environ.get("THP_MEM_ALLOC_ENABLE", "0"),
            "native_over_pytorch_naive": ratios.get("native_over_pytorch"), "machine": machine()}


def train(args: argparse.Namespace) -> dict:
    """A time-budgeted --method nerf run and its figures."""
    from recon3d.api import reconstruct

    if args.device == "cuda":  # build the CUDA kernels before the clock starts (nvcc takes a minute)
        from recon3d.nerf import kernels as nerf_kernels

        if not nerf_kernels.cuda_available():
            raise SystemExit(f"the NeRF CUDA kernels are unavailable: {nerf_kernels.cuda_build_error() or 'no GPU'}")
    # --steps: a fixed step count, no time budget (an A/B of two arms on a shared, loaded machine compares
    # the same work; their CPU seconds are in the figures)
    budget = None if args.steps else args.minutes
    assignments = args.set + ([f"run.steps={args.steps}"] if args.steps else [])
    c0 = time.process_time()
    _, _, metrics = reconstruct(args.data, args.out, time_budget=budget, method="nerf", threads=args.threads,
                                overwrite=True, quiet=True, assignments=assignments, device=args.device)
    metrics["process_cpu_seconds"] = round(time.process_time() - c0, 1)
    keys = ("psnr", "ssim", "psnr_black", "psnr_white", "protocol", "steps", "train_seconds", "rays_per_step",
            "occupied_share", "num_test_views", "device", "steps_per_second", "eval_seconds", "process_cpu_seconds")
    figures = {k: metrics.get(k) for k in keys}
    print(json.dumps(figures, indent=1))
    result = {"what": "nerf training", "data": str(args.data), "minutes": args.minutes, "set": args.set,
              "threads": args.threads, **figures, "machine": machine()}
    if args.distill_seconds > 0:  # the field distilled into splats (recon3d export RUN --format ply), timed apart
        from recon3d.exporters.nerf_distill import distill_run
        from recon3d.nerf.distill import DISTILL_FILE, DistillOptions

        if args.threads > 0:
            torch.set_num_threads(args.threads)
        distill_run(args.out, DistillOptions(seconds=args.distill_seconds, image_scale=args.distill_scale),
                    progress=False)
        record = json.loads((Path(args.out) / DISTILL_FILE).read_text())
        result["distilled"] = {k: record.get(k) for k in ("splats", "gaussians", "steps", "seconds", "seed_seconds",
                                                          "fit_seconds", "fit_psnr_last20")}
        print(json.dumps(result["distilled"], indent=1))
    return result


def distill_ab(args: argparse.Namespace) -> dict:
    """Distillation variants of one run against one cached set of field renders; held-out figures of each."""
    import dataclasses

    from recon3d.nerf.distill import DistillOptions, distill
    from recon3d.nerf.field import render_camera
    from recon3d.run import load_run

    torch.set_num_threads(args.threads)
    run = load_run(args.run)
    model, train = run.nerf, run.indices("train")
    views = list(range(0, len(train), args.every))
    cams = model.transform.cameras_to_train(run.cameras[train].to("cpu"))[views].scaled(args.scale)
    cache_path = Path(args.run) / f"distill_targets_{args.scale:g}_{args.every}.pt"
    if cache_path.is_file():
        cache = torch.load(cache_path, weights_only=True)
    else:
        t0 = time.process_time()
        cache = []
        for i in range(len(cams)):
            rgb, alpha, _ = render_camera(model.field, model.bounds, model.grid, cams, i)
            cache.append((rgb.clamp(0, 1), alpha.clamp(0, 1)))
        print(f"field renders of {len(cache)} views: {time.process_time() - t0:.0f} CPU s", flush=True)
        torch.save(cache, cache_path)
    rows = []
    for spec in args.variants:
        options = DistillOptions(image_scale=args.scale, seconds=1e9, **json.loads(spec))
        c0 = time.process_time()
        scene, stats = distill(model, run.cameras[train], options, progress=False, tune_views=views,
                               targets=cache.__getitem__)
        cpu = time.process_time() - c0
        figures = dataclasses.replace(run, scene=scene, nerf=None).evaluate("test")
        row = {"variant": json.loads(spec), "gaussians": len(scene), "steps": stats["steps"], "cpu_s": round(cpu, 1),
               "fit_psnr_last20": stats.get("fit_psnr_last20"),
               **{k: figures.get(k) for k in ("psnr", "psnr_black", "ssim")}}
        print(json.dumps(row), flush=True)
        rows.append(row)
    return {"what": "distillation variants, one set of field renders", "run": str(args.run), "every": args.every,
            "views": len(views), "scale": args.scale, "threads": args.threads, "variants": rows,
            "field": {k: (run.metrics or {}).get(k) for k in ("psnr", "psnr_black", "ssim")}, "machine": machine()}


def ab(args: argparse.Namespace) -> dict:
    """Training variants side by side in one process: their steps interleaved (the arm with the least CPU
    time goes next), each arm's clock (learning-rate schedule, budget) its own CPU time, so every arm gets the
    same CPU seconds at the same machine load; held-out PSNR of each at the checkpoints ``--at``."""
    import tempfile

    from recon3d.api import _load
    from recon3d.nerf.trainer import NerfTrainer
    from recon3d.train.config import apply_overrides, default_preset, load_preset

    torch.set_num_threads(args.threads)
    work = Path(args.work or tempfile.mkdtemp(prefix="nerf_ab_"))
    base = apply_overrides(load_preset(default_preset()), {"run.method": "nerf", "run.threads": args.threads,
                                                           "run.steps": 10**9})
    data = _load(args.data, work, base)
    arms = []
    for k, spec in enumerate(args.variants):
        sets = [f"{key}={value}" for key, value in json.loads(spec).items()]
        cfg = apply_overrides(base, None, sets)
        trainer = NerfTrainer(data, cfg, work / f"arm{k}", quiet=True)
        arm = {"spec": spec, "trainer": trainer, "cpu": 0.0, "rows": [], "losses": []}
        trainer.clock = lambda arm=arm: arm["cpu"]
        trainer.prepare()
        trainer.budget_end = max(args.at)
        arms.append(arm)
    test = trainer.test_idx[::args.eval_every] if args.eval_every > 0 else []
    checkpoints = sorted(args.at)

    def evaluate(arm: dict, at: float) -> None:
        tr = arm["trainer"]
        c0 = time.process_time()
        rows = [tr._view(i)[0] for i in test]
        recent = arm["losses"][-50:]  # the training batches' MSE (over each ray's random background for photos)

        def mean(key: str) -> float | None:
            found = [r[key] for r in rows if r.get(key) is not None]
            return round(statistics.mean(found), 3) if found else None

        row = {"cpu_s": at, "steps": tr.step, "rays": tr.rays,
               "train_psnr_last50": round(-10 * math.log10(max(statistics.mean(recent), 1e-10)), 3) if recent else None,
               "psnr": mean("psnr"), "psnr_black": mean("psnr_black"),
               "psnr_white": mean("psnr_white"), "ssim": mean("ssim"),
               "eval_cpu_s": round(time.process_time() - c0, 1), "load": os.getloadavg()[0]}
        arm["rows"].append(row)
        print(json.dumps({"arm": arm["spec"], **row}), flush=True)
        if at == checkpoints[-1] and args.render and test:
            from recon3d.evaluation import save_png

            save_png(tr._view(test[0])[1], work / f"arm{arms.index(arm)}_view{test[0]}.png")

    for at in checkpoints:
        while True:
            pending = [a for a in arms if a["cpu"] < at]
            if not pending:
                break
            arm = min(pending, key=lambda a: a["cpu"])
            c0 = time.process_time()
            arm["losses"].append(arm["trainer"].train_step()["loss"])
            arm["cpu"] += time.process_time() - c0
        for arm in arms:
            evaluate(arm, at)
    from recon3d.train.rundir import write_cameras_json

    for k, arm in enumerate(arms):  # each arm as a run directory (recon3d export / eval / view work on it)
        tr, run_dir = arm["trainer"], work / f"arm{k}"
        run_dir.mkdir(parents=True, exist_ok=True)
        tr.field.requires_grad_(False)
        tr.model().save(run_dir / "nerf.pt")
        write_cameras_json(run_dir / "cameras.json", data.cameras, list(data.image_paths), list(data.split))
        atomic_write_text(run_dir / "config.yaml", tr.cfg.to_yaml())
        atomic_write_text(run_dir / "metrics.json", json.dumps(
            {"method": "nerf", "protocol": tr.protocol, "steps": tr.step, "note": f"A/B arm {arm['spec']}: the "
             f"figures are of held-out views {test} only", **{key: arm["rows"][-1][key] for key in
                                                             ("psnr", "psnr_black", "psnr_white", "ssim")}}) + "\n")
    print(f"work: {work}")
    return {"what": "nerf training variants side by side (interleaved steps, equal CPU seconds per arm)",
            "data": str(args.data), "threads": args.threads, "eval_views": test,
            "arms": [{"variant": json.loads(a["spec"]), "rows": a["rows"]} for a in arms], "machine": machine()}


# ../shared/data beside the checkout (a worktree one level deeper finds it one folder further up)
DATA = next((p for p in (ROOT.parent / "shared" / "data", ROOT.parent.parent / "shared" / "data") if p.is_dir()),
            ROOT.parent / "shared" / "data")
TARGETS = {  # issue 20's targets: 2 CPU cores, a 10-minute budget (SfM included for the photo folder)
    "lego": {"data": DATA / "lego", "distill": True,
             "target": "held-out val/ PSNR >= 29 dB from the field, >= 27 dB from its distilled splats (recon3d export "
                       "RUN --format ply with its defaults)"},
    "garden": {"data": ROOT / "examples" / "garden" / "images", "distill": False,
               "target": "held-out PSNR >= 24 dB (photo folder, structure-from-motion inside the budget)"},
}


def target(args: argparse.Namespace) -> dict:
    """One of the issue's target runs with its settings: ``train`` with them, and the verdict."""
    spec = TARGETS[args.name]
    if not spec["data"].exists():
        raise SystemExit(f"{spec['data']}: not found (the {args.name} data)")
    out = args.out or ROOT / "runs" / f"nerf_{args.name}"
    ns = argparse.Namespace(data=spec["data"], out=out, minutes=args.minutes, steps=0, threads=args.threads, device="cpu",
                            set=args.set, distill_seconds=120.0 if spec["distill"] else 0.0, distill_scale=1.0)
    c0, w0 = time.process_time(), time.monotonic()
    result = train(ns)
    result.update({"target_name": args.name, "target": spec["target"], "command": " ".join(sys.argv),
                   "wall_seconds_with_eval_and_distill": round(time.monotonic() - w0, 1),
                   "process_cpu_seconds": round(time.process_time() - c0, 1)})
    if args.name == "lego":
        splats = (result.get("distilled") or {}).get("splats") or {}
        result["met"] = {"field_29": (result.get("psnr") or 0) >= 29.0, "splats_27": (splats.get("psnr") or 0) >= 27.0}
    else:
        worse = min(v for v in (result.get("psnr_black"), result.get("psnr_white"), result.get("psnr")) if v is not None)
        result["met"] = {"garden_24_worse_of_black_white": worse >= 24.0}
    print(json.dumps({"met": result["met"]}))
    return result


def main() -> None:
    """Parse arguments and run one benchmark."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="what", required=True)
    s = sub.add_parser("speed")
    s.add_argument("--rays", type=int, default=1024, help="rays per step (1024 × 64 = the trainer's 65,536 samples)")
    s.add_argument("--samples", type=int, default=64, help="samples per ray")
    s.add_argument("--levels", type=int, default=16)
    s.add_argument("--log2-table", type=int, default=19)
    s.add_argument("--threads", type=int, default=1)
    s.add_argument("--repeats", type=int, default=5)
    s.add_argument("--skip-naive", action="store_true", help="leave out the slow per-corner reference arm")
    t = sub.add_parser("train")
    t.add_argument("data", type=Path)
    t.add_argument("--out", type=Path, required=True)
    t.add_argument("--minutes", type=float, default=10.0)
    t.add_argument("--steps", type=int, default=0, help="train this many steps instead of --minutes (A/B runs)")
    t.add_argument("--threads", type=int, default=0)
    t.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="run.device (auto)")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    t.add_argument("--distill-seconds", type=float, default=0.0,
                   help="then distil the field into splats with this fine-tune budget and report their figures")
    t.add_argument("--distill-scale", type=float, default=1.0, help="the fine-tune's view size factor (1)")
    d = sub.add_parser("distill-ab")
    d.add_argument("run", type=Path, help="a trained --method nerf run directory")
    d.add_argument("variants", nargs="+", help="DistillOptions fields as JSON, one variant each")
    d.add_argument("--every", type=int, default=4, help="fine-tune on every N-th training view (4)")
    d.add_argument("--scale", type=float, default=0.5, help="the fine-tune's view size factor (0.5)")
    d.add_argument("--threads", type=int, default=1)
    a = sub.add_parser("ab")
    a.add_argument("data", type=Path)
    a.add_argument("variants", nargs="+", help="nerf/run settings as JSON ({\"nerf.samples_per_step\": 32768}), "
                                               "one arm each; {} is the defaults")
    a.add_argument("--at", type=float, nargs="+", default=[60.0, 120.0], help="CPU seconds per arm to evaluate at")
    a.add_argument("--eval-every", type=int, default=5, help="every N-th held-out view (5)")
    a.add_argument("--threads", type=int, default=1)
    a.add_argument("--work", type=Path, default=None)
    a.add_argument("--render", action="store_true", help="save each arm's first evaluated view at the end")
    g = sub.add_parser("target", help="an issue-20 target run: lego (10 min + export) or garden (10 min)")
    g.add_argument("name", choices=sorted(TARGETS))
    g.add_argument("--minutes", type=float, default=10.0)
    g.add_argument("--threads", type=int, default=2)
    g.add_argument("--out", type=Path, default=None, help="the run directory (runs/nerf_NAME)")
    g.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    for q in (s, t, d, a, g):
        q.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    result = {"speed": speed, "train": train, "distill-ab": distill_ab, "ab": ab, "target": target}[args.what](args)
    name = args.name if args.what == "target" else args.what.replace("-", "_")
    out = args.json or ROOT / "benchmarks" / "results" / f"nerf_{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
