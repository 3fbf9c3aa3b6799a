"""Benchmark the text-to-scene generator with the independent judge; prints and saves JSON.

    .venv/bin/python benchmarks/generate.py                      # held-out + training-distribution prompts
    .venv/bin/python benchmarks/generate.py --ground-truth-only  # the judge on the composer's own scenes
    .venv/bin/python benchmarks/generate.py --suite round2 --checkpoint W.pt   # issue 18's sets (below)

Held-out prompts come from ../shared/generation/heldout.txt; training-distribution prompts are drawn
(seeded) from the composer's grammar with primitives and (shape, colour) pairs the training set contains.
The judge (recon3d/generation/judge.py) never calls the generator.

``--suite round2`` (issue 18): the round-2 grammar's sets, each scene judged by ``judge_scene`` (per-object
shape by Chamfer to canonical shapes, colour by CIELAB dE <= 12 to the named colour's real RGB, relations
from object centroids, objects counted as connected components):

- ``single``: heldout.txt's single-object prompts; ``val_pairs``: our 9 held-out (shape, colour) pairs;
  silhouette IoU (centred, front view) of both against the composer's render of the same caption;
- ``wording``: one- and two-object scenes captioned with the 2 templates and 2 wrappers never trained on;
- ``three`` / ``five``: three- and five-object scenes (new seeds); ``counts``: n = 1..5 objects standing apart;
- ``combos``: the held-out (count, relation) combinations;
- ``image``: held-out-pair objects composed and rendered from a seeded random view (64², the encoder's
  size), given as the image prompt alone.
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


def round2_sets(per_set: int, seed: int = 2026) -> dict[str, list]:
    """Issue 18's prompt sets: name -> list of (prompt, grammar Scene); see the module docstring."""
    from recon3d.generation import grammar as g

    rng = np.random.default_rng(seed)
    held = load_heldout()
    rules = g.training_rules(held)
    sets: dict[str, list] = {"single": [], "val_pairs": []}
    for prompt in held.single_prompts:
        o = parse_caption(prompt).objects[0]
        sets["single"].append((prompt, g.bare_scene(o.shape, o.colour, o.size)))
    for shape, colour in sorted(g.VALIDATION_PAIRS):
        scene = g.bare_scene(shape, colour)
        sets["val_pairs"].append((g.caption(scene, rng, template="plain", wrapper="bare").text, scene))

    def captioned(kind: str, n: int, want=None, **kw) -> list:
        out, seen = [], set()
        while len(out) < n:
            scene = g.random_scene(rng, rules, kind)
            if want is not None and not want(scene):
                continue
            text = g.caption(scene, rng, rules, **kw).text
            if text not in seen:
                seen.add(text)
                out.append((text, scene))
        return out

    wording_rules = g.Rules(pairs=rules.pairs, object_templates=(), wrappers=())
    for i in range(per_set):  # held-out templates and wrappers only
        scene = g.random_scene(rng, rules, "single" if i % 2 == 0 else "pair")
        cap = g.caption(scene, rng, wording_rules, template=g.HELDOUT_OBJECT_TEMPLATES[i % 2],
                        wrapper=g.HELDOUT_WRAPPERS[(i // 2) % 2])
        sets.setdefault("wording", []).append((cap.text, scene))
    sets["three"] = captioned("triple", per_set, lambda s: s.num_objects == 3)
    sets["five"] = captioned("list", per_set, lambda s: s.num_objects == 5) if per_set else []
    sets["counts"] = []
    for k in range(per_set):
        n = 1 + k % 5
        thing = g.random_thing(rng, rules, composite_p=0.0, size_p=0.0, count=n)
        scene = g.Scene([thing])
        sets["counts"].append((g.caption(scene, rng, rules).text, scene))
    sets["combos"] = []
    for n, rel in sorted(g.VALIDATION_COUNT_RELATIONS):
        shape = "cube" if rel == "stack" else None
        a = g.random_thing(rng, rules, composite_p=0.0, size_p=0.0, count=n)
        if shape:
            a = g.Thing(shape, a.colour, None, n)
        if rel in ("stack", "row"):
            a.arrangement = rel
            scene = g.Scene([a])
        else:
            a.size = "small" if rel == "around" else None
            scene = g.Scene([a, g.random_thing(rng, rules, composite_p=0.0, size_p=0.0)], [g.Relation(0, rel, (1,))])
        sets["combos"].append((g.caption(scene, rng, rules).text, scene))
    pairs = sorted({*held.pairs, *g.VALIDATION_PAIRS})
    sets["image"] = []
    for k in range(per_set):
        shape, colour = pairs[k % len(pairs)]
        sets["image"].append((f"image of a {colour} {shape}", g.bare_scene(shape, colour)))
    return sets


ROUND2_ORDER = ("single", "val_pairs", "wording", "counts", "three", "image", "five", "combos")


def run_round2(args, make_scene, make_image_scene, result: dict, save) -> list[float]:
    """Judge every round-2 set; fills ``result`` with per-set rates and per-scene verdicts (``save()`` after
    each set, so an interrupted run keeps what it measured); returns the generation times."""
    from rich.progress import track

    from recon3d.generation.bank import render_training_view
    from recon3d.generation.composer import compose_grammar, compose_grammar_scene
    from recon3d.generation.judge import judge_scene, silhouette_iou

    sets = round2_sets(args.per_set, args.prompt_seed)
    default = [k for k in ROUND2_ORDER if k != "image" or make_image_scene is not None]
    wanted = [s.strip() for s in args.sets.split(",") if s.strip()] if args.sets else default
    unknown = sorted(set(wanted) - set(default))
    if unknown:
        raise SystemExit(f"unknown sets {unknown}; choose from {default}")
    result["prompts"] = {k: [p for p, _ in sets[k]] for k in wanted}
    times: list[float] = []
    for name in wanted:
        rows = []
        for (prompt, scene), seed in track([(x, s) for x in sets[name] for s in range(args.seeds)], description=name):
            t, c = time.perf_counter(), time.process_time()
            if name == "image":
                rng = np.random.default_rng([args.prompt_seed, 7, len(rows)])
                feats, _, _ = compose_grammar(scene, 1024, rng)
                image = render_training_view(feats, rng, 64).permute(1, 2, 0).numpy()
                out = make_image_scene(image, seed)
            else:
                out = make_scene(prompt, scene, seed)
            times.append(time.perf_counter() - t)
            cpu = time.process_time() - c
            v = judge_scene(out, scene)
            row = {"prompt": prompt, "seed": seed, "objects": scene.num_objects, "shape_ok": v.shapes_ok,
                   "colour_ok": v.colours_ok, "relation_ok": v.relations_ok, "all_ok": v.all_ok, "counted": v.counted,
                   "count_ok": v.counted == scene.num_objects, "seconds": times[-1], "cpu_seconds": cpu,
                   "gaussians": int(out.num_gaussians),
                   "judged": [{"shape": o.shape, "colour": o.colour, "rgb": o.rgb} for o in v.objects]}
            if name in ("single", "val_pairs"):
                ref, _ = compose_grammar_scene(scene, 2048, seed=1000 + seed)
                row["silhouette_iou"] = silhouette_iou(out, ref)
            rows.append(row)
        n = len(rows)
        summary = {"n": n, **{k: sum(r[k + "_ok"] for r in rows) / n for k in ("shape", "colour", "relation", "all", "count")}}
        if rows and "silhouette_iou" in rows[0]:
            summary["silhouette_iou_median"] = statistics.median(r["silhouette_iou"] for r in rows)
        result[name] = summary
        result[name + "_scenes"] = rows
        result["latency_seconds"] = {"mean": statistics.mean(times), "median": statistics.median(times), "max": max(times)}
        save()
        print(f"{name:10} n={n:3d} shape {summary['shape']:.0%} colour {summary['colour']:.0%} relation "
              f"{summary['relation']:.0%} all {summary['all']:.0%} count {summary['count']:.0%}"
              + (f" IoU {summary['silhouette_iou_median']:.3f}" if "silhouette_iou_median" in summary else ""), flush=True)
    return times


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write the JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--suite", choices=("round1", "round2", "latency", "states"), default="round1",
                    help="round2: issue 18's sets; latency: before/after sampling cost of a slot-query checkpoint; "
                    "states: what a stage-2 checkpoint's attribute head reads off its object states (no sampling)")
    ap.add_argument("--per-set", type=int, default=10, help="round2: scenes per generated set (default 10)")
    ap.add_argument("--checkpoint", type=Path, default=None, help="default: the shipped checkpoint")
    ap.add_argument("--seeds", type=int, default=3, help="seeds per prompt (default 3)")
    ap.add_argument("--num-gaussians", type=int, default=None)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--guidance", type=float, default=None)
    ap.add_argument("--solver", choices=("euler", "heun"), default=None, help="round2: ODE solver")
    ap.add_argument("--guidance-until", type=float, default=None, help="round2: guidance only for t below this")
    ap.add_argument("--precision", choices=("float32", "bfloat16"), default=None, help="round2: the velocity network's")
    ap.add_argument("--repeats", type=int, default=3, help="latency: timed calls per setting (median)")
    ap.add_argument("--train-singles", type=int, default=10)
    ap.add_argument("--train-pairs", type=int, default=6)
    ap.add_argument("--threads", type=int, default=2, help="torch threads (the target machine has 2 cores)")
    ap.add_argument("--prompt-seed", type=int, default=123, help="seed of the training-distribution prompts")
    ap.add_argument(
        "--sets", default=None,
        help="comma-separated prompt sets to run (round1 default: heldout_single,heldout_pair,train_single,train_pair; "
        "validation runs: train_single,train_pair with another --prompt-seed; round2 default: all)",
    )
    ap.add_argument("--ground-truth-only", action="store_true", help="judge the composer's scenes only")
    ap.add_argument("--out", type=Path, default=None, help="JSON path (default benchmarks/results/generate[-gt].json)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.suite == "round2":
        return main_round2(args)
    if args.suite == "latency":
        return main_latency(args)
    if args.suite == "states":
        return main_states(args)

    held = load_heldout()
    train_single, train_pair = training_prompts(held, args.train_singles, args.train_pairs, args.prompt_seed)
    sets = {
        "heldout_single": held.single_prompts,
        "heldout_pair": held.pair_prompts,
        "train_single": train_single,
        "train_pair": train_pair,
    }
    wanted = [s.strip() for s in (args.sets or ",".join(sets)).split(",") if s.strip()]
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


def main_round2(args) -> int:
    """``--suite round2``: generate (or compose, with --ground-truth-only) and judge issue 18's sets."""
    from recon3d.io_utils import atomic_write_text

    per_object = args.num_gaussians or 2048
    result: dict = {"suite": "round2", "machine": {"threads": torch.get_num_threads(), "platform": platform.platform(),
                                                    "torch": torch.__version__},
                    "seeds": args.seeds, "prompt_seed": args.prompt_seed, "per_set": args.per_set}
    if args.ground_truth_only:
        from recon3d.generation.composer import compose_grammar_scene

        def make_scene(prompt, scene, seed):
            return compose_grammar_scene(scene, per_object, seed=2000 + seed)[0]

        make_image_scene = None  # the image set needs a generator
        result["mode"] = "ground_truth"
    else:
        from recon3d.generation.api import DEFAULT_CHECKPOINT, generate

        ckpt = args.checkpoint or DEFAULT_CHECKPOINT
        opts = {k: v for k, v in (("num_gaussians", args.num_gaussians), ("steps", args.steps), ("guidance", args.guidance)) if v is not None}
        sampler = {k: v for k, v in (("solver", args.solver), ("guidance_until", args.guidance_until),
                                     ("precision", args.precision)) if v is not None}
        if sampler:
            opts["sampler"] = sampler

        def make_scene(prompt, scene, seed):
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return generate(prompt, seed=seed, checkpoint=ckpt, **opts)

        def make_image_scene(image, seed):
            return generate(image=image, seed=seed, checkpoint=ckpt, **opts)

        t = time.perf_counter()
        make_scene("a red cube", None, 0)
        result["load_seconds"] = time.perf_counter() - t
        meta = Path(ckpt).with_suffix(".json")
        result["checkpoint"] = {"path": str(ckpt), "step": json.loads(meta.read_text()).get("step") if meta.is_file() else None}
        from recon3d.generation.api import _load

        result["settings"] = {**_load(str(ckpt), "cpu").sample_defaults, **opts}
        result["mode"] = "generator"
    out = args.out or ROOT / "benchmarks" / "results" / ("generate-round2-gt.json" if args.ground_truth_only else "generate-round2.json")
    run_round2(args, make_scene, make_image_scene, result, lambda: atomic_write_text(out, json.dumps(result, indent=1)))
    lat = result["latency_seconds"]
    print(f"latency per scene (generation only): mean {lat['mean']:.3f} s, median {lat['median']:.3f} s, max {lat['max']:.3f} s")
    print(f"wrote {out}")
    return 0


def main_states(args) -> int:
    """``--suite states``: per object of the round-2 sets' prompts (``--sets``, default three), the shape and the
    colour the checkpoint's attribute head reads off the object-query states, against the caption's; no sampling.
    Tells whether the queries bind each object's words (the states) or the flow network mixes them later."""
    from recon3d.generation.bank import ATTRIBUTE_COLOURS, ATTRIBUTE_DIM, ATTRIBUTE_SHAPES
    from recon3d.generation.grammar import colour_rgb, delta_e
    from recon3d.generation.sample import load_generator
    from recon3d.generation.text import get_encoder

    gen = load_generator(args.checkpoint)
    model = gen.model
    if getattr(model, "attribute_head", None) is None:
        raise SystemExit(f"{args.checkpoint}: no attribute head (model.attributes = 0)")
    enc = get_encoder()
    sets = round2_sets(args.per_set, args.prompt_seed)
    shapes_ok = colours_ok = total = 0
    rows = []
    for name in (args.sets or "three").split(","):
        for prompt, scene in sets[name]:
            tokens, mask, _ = enc.encode([prompt])
            with torch.no_grad():
                ctx, cmask = model.context(tokens, mask, None, 1)
                states, _ = model.slot_states(ctx, cmask)
                attrs = model.attribute_head(states)[0]
            want = [g for i in _slot_groups(scene, prompt) for g in [scene.groups[i]] * scene.groups[i].count]
            got = []
            for k, thing in enumerate(want):
                shape = ATTRIBUTE_SHAPES[int(attrs[k, : len(ATTRIBUTE_SHAPES)].argmax())]
                if attrs.shape[-1] > ATTRIBUTE_DIM:  # colour classes
                    colour = ATTRIBUTE_COLOURS[int(attrs[k, len(ATTRIBUTE_SHAPES) : len(ATTRIBUTE_SHAPES) + len(ATTRIBUTE_COLOURS)].argmax())]
                    rgb = np.array(colour_rgb(colour))
                else:
                    rgb = ((attrs[k, -9:-6] + 1) / 2).clamp(0, 1).numpy()
                    colour = None
                s_ok = shape == thing.shape
                c_ok = thing.colour is None or float(delta_e(rgb[None], np.array(colour_rgb(thing.colour))[None])[0]) <= 12
                shapes_ok, colours_ok, total = shapes_ok + s_ok, colours_ok + c_ok, total + 1
                got.append({"want": [thing.shape, thing.colour], "shape": shape, "colour": colour, "rgb": rgb.tolist(),
                            "shape_ok": bool(s_ok), "colour_ok": bool(c_ok)})
            rows.append({"set": name, "prompt": prompt, "objects": got})
            print(prompt[:90], "->", [(o["shape"], o["colour"] or "rgb", o["shape_ok"], o["colour_ok"]) for o in got], flush=True)
    print(f"objects {total}: shape read right {shapes_ok / total:.0%}, colour (dE <= 12) {colours_ok / total:.0%}")
    if args.out:
        from recon3d.io_utils import atomic_write_text

        atomic_write_text(args.out, json.dumps({"suite": "states", "checkpoint": str(args.checkpoint), "rows": rows,
                                                "shape": shapes_ok / total, "colour": colours_ok / total}, indent=1))
    return 0


def _slot_groups(scene, prompt: str) -> list[int]:
    """The groups of ``scene`` in the order ``prompt`` first names them (the slot order the bank trains), found
    by where each group's noun (then its colour, for two groups of one noun) first appears: a diagnostic's guess."""
    from recon3d.generation import grammar as g

    def first(word: str | None) -> int:
        if not word:
            return len(prompt)
        hits = [i for i in (prompt.find(f" {word}"), 0 if prompt.startswith(word) else -1) if i >= 0]
        return min(hits) if hits else len(prompt)

    def key(i: int) -> tuple[int, int]:
        thing = scene.groups[i]
        return min(first(thing.noun), first(g.plural(thing.noun))), first(thing.colour)

    return sorted(range(len(scene.groups)), key=key)


LATENCY_PROMPTS = ("a red cube", "four red cubes")  # one object (2,048 Gaussians), four (8,192)
_FIRST_CALL = """
import sys, time, warnings
import torch
torch.set_num_threads({threads})
c, t = time.process_time(), time.perf_counter()
import recon3d
warnings.simplefilter("ignore")
recon3d.generate("a red cube", checkpoint=sys.argv[1], seed=0)
print(time.process_time() - c, time.perf_counter() - t)
"""


def main_latency(args) -> int:
    """``--suite latency``: CPU time of one ``generate`` call, before (the shipped checkpoint's settings on the
    one-hot slot path) and after (the settings given, blocked path), side by side in one process; and the
    first call (imports, encoder, checkpoint, reference embeddings) in fresh processes, cold and warm cache.

    CPU time (``time.process_time``) at ``--threads 1`` is what one quiet core takes, whatever else loads the
    machine; with 2 cores the wall time is at most that.
    """
    import os
    import subprocess
    import tempfile
    import warnings

    from recon3d.generation import api
    from recon3d.generation.api import DEFAULT_CHECKPOINT, generate
    from recon3d.io_utils import atomic_write_text

    ckpt = Path(args.checkpoint or DEFAULT_CHECKPOINT)
    gen = api._load(str(ckpt), "cpu")
    if not getattr(gen, "is_slot_query", False):
        raise SystemExit(f"{ckpt}: --suite latency measures a slot-query (round 2) checkpoint")
    shipped = dict(gen.sample_defaults)
    before = {"steps": 12, "guidance": shipped["guidance"], "sampler": {"solver": "euler", "guidance_until": 1.0,
                                                                        "precision": "float32"}}
    after = {"steps": args.steps or shipped["steps"], "guidance": args.guidance or shipped["guidance"],
             "sampler": {"solver": args.solver or shipped.get("solver", "euler"),
                         "guidance_until": args.guidance_until or shipped.get("guidance_until", 1.0),
                         "precision": args.precision or shipped.get("precision", "float32")}}
    model = gen.model
    blocked_velocity = model.velocity

    def one_hot_velocity(*a, per_object=None, **k):  # the path before the blocked layout (same maths)
        return blocked_velocity(*a, **k)

    result: dict = {"suite": "latency", "checkpoint": str(ckpt), "threads": torch.get_num_threads(),
                    "machine": {"platform": platform.platform(), "torch": torch.__version__, "cpus": os.cpu_count(),
                                "loadavg_start": os.getloadavg()},
                    "before": before, "after": after, "rows": []}
    warnings.simplefilter("ignore")
    for prompt in LATENCY_PROMPTS:
        for label, opts, path in (("before", before, "one-hot"), ("after", after, "blocked")):
            model.velocity = one_hot_velocity if path == "one-hot" else blocked_velocity
            generate(prompt, checkpoint=ckpt, seed=0, num_gaussians=64, **opts)  # warm caches at this setting
            cpu, wall, n = [], [], 0
            for r in range(args.repeats):
                c, t = time.process_time(), time.perf_counter()
                scene = generate(prompt, checkpoint=ckpt, seed=r, **opts)
                cpu.append(time.process_time() - c)
                wall.append(time.perf_counter() - t)
                n = scene.num_gaussians
            row = {"prompt": prompt, "setting": label, "path": path, "gaussians": n,
                   "cpu_seconds_median": statistics.median(cpu), "cpu_seconds": cpu, "wall_seconds": wall}
            result["rows"].append(row)
            print(f"{prompt!r:18} {label:6} {n:6d} Gaussians: CPU {row['cpu_seconds_median']:.3f} s (median of "
                  f"{len(cpu)}; wall {statistics.median(wall):.3f} s)", flush=True)
    model.velocity = blocked_velocity
    for prompt in LATENCY_PROMPTS:
        b = next(r for r in result["rows"] if r["prompt"] == prompt and r["setting"] == "before")
        a = next(r for r in result["rows"] if r["prompt"] == prompt and r["setting"] == "after")
        result.setdefault("speedup", {})[prompt] = b["cpu_seconds_median"] / a["cpu_seconds_median"]
    # the first call in a fresh process: cold (empty cache folder) and warm (the reference embeddings cached)
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "RECON3D_CACHE": cache, "OMP_NUM_THREADS": str(torch.get_num_threads())}
        for label in ("first_call_cold_cache", "first_call_warm_cache"):
            out = subprocess.run([sys.executable, "-c", _FIRST_CALL.format(threads=torch.get_num_threads()), str(ckpt)],
                                 env=env, capture_output=True, text=True, check=True, cwd=ROOT)
            c, w = map(float, out.stdout.split()[-2:])
            result[label] = {"cpu_seconds": c, "wall_seconds": w}
            print(f"{label}: CPU {c:.2f} s (wall {w:.2f} s)", flush=True)
    result["machine"]["loadavg_end"] = os.getloadavg()
    out = args.out or ROOT / "benchmarks" / "results" / "generate-latency.json"
    atomic_write_text(out, json.dumps(result, indent=1))
    print("speedup (CPU time, before / after): " + ", ".join(f"{k!r} {v:.1f}x" for k, v in result["speedup"].items()))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
