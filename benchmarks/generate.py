"""Benchmark the text-to-scene generator with the independent judge; prints and saves JSON.

    .venv/bin/python benchmarks/generate.py                      # held-out + training-distribution prompts
    .venv/bin/python benchmarks/generate.py --ground-truth-only  # the judge on the composer's own scenes

Held-out prompts come from ../shared/generation/heldout.txt; training-distribution prompts are drawn
(seeded) from the composer's grammar with primitives and (shape, colour) pairs the training set contains.
The judge (recon3d/generation/judge.py) never calls the generator.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recon3d.generation.data import (  # noqa: E402
    COLOURS,
    PRIMITIVES,
    RELATIONS,
    ObjectSpec,
    SceneSpec,
    compose_scene,
    load_heldout,
    parse_caption,
)
from recon3d.generation.judge import judge  # noqa: E402


def training_prompts(heldout, singles: int, pairs: int, seed: int = 123) -> tuple[list[str], list[str]]:
    """Seeded prompts of the training distribution (primitives, allowed pairs, not held-out prompts)."""
    rng = np.random.default_rng(seed)
    colours = list(COLOURS)
    out_single, out_pair = [], []

    def obj(size_ok: bool) -> ObjectSpec:
        size = [None, None, "small", "large"][rng.integers(4)] if size_ok else None
        return ObjectSpec(PRIMITIVES[rng.integers(len(PRIMITIVES))], colours[rng.integers(len(colours))], size)

    while len(out_single) < singles:
        spec = SceneSpec([obj(True)])
        if heldout.allows(spec) and spec.caption not in out_single:
            out_single.append(spec.caption)
    while len(out_pair) < pairs:
        spec = SceneSpec([obj(False), obj(False)], RELATIONS[len(out_pair) % len(RELATIONS)])
        if heldout.allows(spec) and spec.objects[0].colour != spec.objects[1].colour:
            out_pair.append(spec.caption)
    return out_single, out_pair


def summarise(verdicts: list[dict]) -> dict:
    """Rates over a list of per-scene verdicts."""
    if not verdicts:
        return {}
    n = len(verdicts)
    out = {"n": n, "shape": sum(v["shape_ok"] for v in verdicts) / n, "colour": sum(v["colour_ok"] for v in verdicts) / n}
    if verdicts[0]["relation_ok"] is not None:
        out["relation"] = sum(bool(v["relation_ok"]) for v in verdicts) / n
    out["all"] = sum(v["all_ok"] for v in verdicts) / n
    return out


def run_set(prompts: list[str], seeds: int, make_scene, label: str) -> tuple[list[dict], list[float]]:
    """Judge ``seeds`` scenes per prompt; returns verdict dicts and generation times."""
    from rich.progress import track

    verdicts, times = [], []
    jobs = [(p, s) for p in prompts for s in range(seeds)]
    for prompt, seed in track(jobs, description=label):
        t = time.perf_counter()
        scene = make_scene(prompt, seed)
        times.append(time.perf_counter() - t)
        v = judge(scene, prompt)
        verdicts.append(
            {
                "prompt": prompt,
                "seed": seed,
                "shape_ok": v.shape_ok,
                "colour_ok": v.colour_ok,
                "relation_ok": v.relation_ok,
                "all_ok": v.all_ok,
                "relation": v.relation,
                "objects": [{"shape": o.shape, "colour": o.colour, "rgb": o.rgb, "count": o.count} for o in v.objects],
                "seconds": times[-1],
            }
        )
    return verdicts, times


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write the JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, default=None, help="default: the shipped checkpoint")
    ap.add_argument("--seeds", type=int, default=3, help="seeds per prompt (default 3)")
    ap.add_argument("--num-gaussians", type=int, default=None)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--guidance", type=float, default=None)
    ap.add_argument("--train-singles", type=int, default=10)
    ap.add_argument("--train-pairs", type=int, default=6)
    ap.add_argument("--threads", type=int, default=2, help="torch threads (the target machine has 2 cores)")
    ap.add_argument("--prompt-seed", type=int, default=123, help="seed of the training-distribution prompts")
    ap.add_argument(
        "--sets", default="heldout_single,heldout_pair,train_single,train_pair",
        help="comma-separated prompt sets to run (validation runs: train_single,train_pair with another --prompt-seed)",
    )
    ap.add_argument("--ground-truth-only", action="store_true", help="judge the composer's scenes only")
    ap.add_argument("--out", type=Path, default=None, help="JSON path (default benchmarks/results/generate[-gt].json)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    held = load_heldout()
    train_single, train_pair = training_prompts(held, args.train_singles, args.train_pairs, args.prompt_seed)
    sets = {
        "heldout_single": held.single_prompts,
        "heldout_pair": held.pair_prompts,
        "train_single": train_single,
        "train_pair": train_pair,
    }
    wanted = [s.strip() for s in args.sets.split(",") if s.strip()]
    unknown = sorted(set(wanted) - set(sets))
    if unknown:
        ap.error(f"unknown sets {unknown}; choose from {sorted(sets)}")
    sets = {k: v for k, v in sets.items() if k in wanted}
    result: dict = {
        "machine": {"cpus": torch.get_num_threads(), "platform": platform.platform(), "torch": torch.__version__},
        "seeds": args.seeds,
        "prompt_seed": args.prompt_seed,
        "prompts": sets,
    }
    if args.ground_truth_only:
        def make_scene(prompt, seed):
            return compose_scene(parse_caption(prompt), num_gaussians=args.num_gaussians or 512, seed=seed)

        result["mode"] = "ground_truth"
    else:
        from recon3d.generation.api import DEFAULT_CHECKPOINT, generate

        ckpt = args.checkpoint or DEFAULT_CHECKPOINT
        opts = {k: v for k, v in (("num_gaussians", args.num_gaussians), ("steps", args.steps), ("guidance", args.guidance)) if v is not None}

        def make_scene(prompt, seed):
            return generate(prompt, seed=seed, checkpoint=ckpt, **opts)

        t = time.perf_counter()
        make_scene("a red cube", 0)  # loads the encoder and the checkpoint once
        result["load_seconds"] = time.perf_counter() - t
        meta = Path(ckpt).with_suffix(".json")
        result["checkpoint"] = {"path": str(ckpt), "meta": json.loads(meta.read_text()) if meta.is_file() else None}
        result["settings"] = opts
        result["mode"] = "generator"
    all_times = []
    for name, prompts in sets.items():
        verdicts, times = run_set(prompts, args.seeds, make_scene, name)
        all_times += times
        result[name] = summarise(verdicts)
        result[name + "_scenes"] = verdicts
    result["latency_seconds"] = {
        "mean": statistics.mean(all_times),
        "median": statistics.median(all_times),
        "max": max(all_times),
    }
    out = args.out or ROOT / "benchmarks" / "results" / ("generate-gt.json" if args.ground_truth_only else "generate.json")
    from recon3d.io_utils import atomic_write_text

    atomic_write_text(out, json.dumps(result, indent=1))
    print(f"{'set':16} {'n':>4} {'shape':>7} {'colour':>7} {'relation':>9} {'all':>7}")
    for name in sets:
        r = result[name]
        rel = f"{r['relation']:.0%}" if "relation" in r else "-"
        print(f"{name:16} {r['n']:4d} {r['shape']:7.0%} {r['colour']:7.0%} {rel:>9} {r['all']:7.0%}")
    lat = result["latency_seconds"]
    print(f"latency per scene: mean {lat['mean']:.3f} s, median {lat['median']:.3f} s, max {lat['max']:.3f} s")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
