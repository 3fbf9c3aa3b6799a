"""Library search benchmarks (issue 19, item 5): search latency at 100k indexed scenes and the indexing rate.

    python benchmarks/search.py latency [--scenes 100000] [--queries 200]
    python benchmarks/search.py indexing [--scenes 40] [--gaussians 50000] [--threads 2]
    python benchmarks/search.py recall [--scenes 1000] [--describe 200]
    python benchmarks/search.py all

``latency``: an index of N synthetic scenes (random unit text and image parts, fused as real scenes are,
rows in the SQLite store with their vectors, the faiss index built from them), then queries that are
perturbed copies of stored scenes' vectors (so each has a right answer). Reported: the median and p95
time of ``search``'s part after the query is embedded (vector query + SQLite rows), recall@1 of the
index against numpy brute force, and, separately, the time to embed a text query with MiniLM.
Target: <= 50 ms.

``indexing``: a library of N composed scenes of G Gaussians each (PLY files written here), indexed from
scratch with ``index_library`` (discovery, hashing, loading, three 128² thumbnails with our rasterizer,
descriptors, MiniLM text, SQLite and the vector index). Reported: scenes per second, end to end, and the share of
each stage. Target: >= 10 scenes/s on 2 cores for scenes of <= 50k Gaussians.

``recall``: N composed scenes from seeds never trained on (the encoders train on seeds ``[0, chunk, k]``;
these are ``[7919, k]``), any colour/shape pair and combination (the validation rules: the generator's held-out
pairs included). Each scene gets the vector ``index_library`` gives it, *without any text* (so the encoders are
measured, not file names): the scene encoder's embedding and the image encoder's mean over three orbit views
(0°, 120°, 240°, 20° up). Queries: (a) a caption in held-out wording (the templates ``that is`` / ``in``
and the wrappers ``a picture of`` / ``can you make``, never used in training) embedded by MiniLM, ranked as
``search`` ranks a text query; (b) a view from a new random viewpoint (azimuth any, elevation 10°-50°) embedded and ranked
as ``search --image`` does (``query_image_embedding``: with its one-pixel shifts averaged). recall@1 / @5 over the N scenes. Targets: text recall@1 >= 0.80, @5 >= 0.95; image
recall@1 >= 0.90. (c) ``describe`` on the first M one- and two-object scenes, judged against the ground
truth: every object's shape and count right, its colour within the judge's tolerance (ΔE <= 12 between the
named colour and the true one), and the described relation true of the scene's layout (the generator
judge's ``relation_holds`` on the objects' true centres). Target: all right >= 85 %. ``describe`` is given
the scene as ``recon3d.describe`` is (its colours and relation checked against the Gaussians). The views are rendered
at the encoder's input size (32²) directly; ``index_library`` renders 128² thumbnails and area-resizes them.

Results go to benchmarks/results/search_*.json with the machine's load average (the machine is shared).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"


def _machine() -> dict:
    return {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "load_average": list(os.getloadavg()),
            "python": platform.python_version(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def _unit_rows(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def bench_latency(scenes: int, queries: int, seed: int = 0) -> dict:
    """Search latency over ``scenes`` synthetic vectors through the real store."""

    from recon3d.library.embed import DIM, EMBEDDING_VERSION, PART_DIM, TEXT_DIM, TextEmbedder
    from recon3d.library.store import LibraryStore
    from recon3d.understand.fusion import fuse_many

    rng = np.random.default_rng(seed)
    text = _unit_rows(rng, scenes, TEXT_DIM)
    parts = [text, _unit_rows(rng, scenes, PART_DIM), _unit_rows(rng, scenes, PART_DIM)]  # text, scene, image
    vectors = fuse_many(*parts)  # as index_library fuses a scene (its hubness last)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        store = LibraryStore(folder, DIM, EMBEDDING_VERSION)
        t0 = time.perf_counter()
        with store.db:
            store.db.executemany(
                "INSERT INTO scenes (rel, kind, size, mtime_ns, hash, num_gaussians, texts, summary, vector, thumb, "
                "indexed_at) VALUES (?, 'ply', 0, 0, '', 0, '[]', '', ?, NULL, 0)",
                ((f"synthetic/{i:06d}.ply", vectors[i].tobytes()) for i in range(scenes)))
            store.db.execute("UPDATE meta SET value = '1' WHERE key = 'generation'")
        store.close()
        t_rows = time.perf_counter() - t0
        t0 = time.perf_counter()
        store = LibraryStore(folder, DIM, EMBEDDING_VERSION)  # builds the vector index from the rows and saves it
        t_build = time.perf_counter() - t0
        store.close()
        t0 = time.perf_counter()
        store = LibraryStore(folder, DIM, EMBEDDING_VERSION, readonly=True)  # what a search opens
        t_open = time.perf_counter() - t0
        picks = rng.integers(0, scenes, queries)
        # a text query near a stored scene's text part (what a caption in other words is to its scene)
        q_text = text[picks] + 0.5 * _unit_rows(rng, queries, TEXT_DIM) / np.sqrt(1.0)
        q_text /= np.linalg.norm(q_text, axis=1, keepdims=True)
        from recon3d.library.embed import query_vector

        qs = np.stack([query_vector(q, None) for q in q_text])
        times, hits, exact_hits = [], 0, 0
        ids_of = np.array([r[0] for r in store.db.execute("SELECT id FROM scenes ORDER BY rel")])
        for q, pick in zip(qs, picks):
            t0 = time.perf_counter()
            labels, scores = store.vectors.query(q, 10)
            records = store.records(labels.tolist())
            times.append(time.perf_counter() - t0)
            exact = int(np.argmax(vectors @ q))
            hits += int(labels[0] == ids_of[exact])
            exact_hits += int(exact == pick)
            assert len(records) == len(labels)
        store.close()
        index_bytes = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
    embedder = TextEmbedder()
    embedder.embed(["warm up"])
    t_embed = []
    for k in range(20):
        t0 = time.perf_counter()
        embedder.embed([f"a red cube on top of a blue sphere number {k}"])
        t_embed.append(time.perf_counter() - t0)
    ms = np.array(times) * 1000
    return {
        "scenes": scenes, "dim": DIM, "queries": queries, "top": 10,
        "search_ms_median": round(float(np.median(ms)), 3), "search_ms_p95": round(float(np.percentile(ms, 95)), 3),
        "target_ms": 50, "recall_at_1_vs_exact": hits / queries, "exact_finds_source": exact_hits / queries,
        "text_query_embed_ms_median": round(float(np.median(t_embed)) * 1000, 2),
        "insert_rows_s": round(t_rows, 2), "vector_index_build_s": round(t_build, 2), "open_readonly_s": round(t_open, 3),
        "index_mib": round(index_bytes / 2**20, 1),
    }


def _write_library(root: Path, scenes: int, gaussians: int, seed: int) -> None:
    """``scenes`` composed single- and two-object scenes of ``gaussians`` Gaussians, each with its prompt."""
    from recon3d.generation.composer import compose_grammar_scene
    from recon3d.generation.grammar import Rules, caption, random_scene
    from recon3d.ply import save_ply

    rng = np.random.default_rng(seed)
    rules = Rules(pairs=set())
    for i in range(scenes):
        g = random_scene(rng, rules)
        per_object = max(1, gaussians // g.num_objects)
        scene, _ = compose_grammar_scene(g, per_object=per_object, seed=seed + i)
        save_ply(scene, root / f"scene_{i:04d}.ply")
        (root / f"scene_{i:04d}.json").write_text(json.dumps({"prompt": caption(g, rng, rules).text}))


def bench_indexing(scenes: int, gaussians: int, threads: int, seed: int = 0) -> dict:
    """Scenes per second of a from-scratch ``index_library`` over composed scenes."""
    from recon3d.library import index as index_module
    from recon3d.library.embed import TextEmbedder

    torch.set_num_threads(threads)
    embedder = TextEmbedder()
    embedder.embed(["warm up"])
    with tempfile.TemporaryDirectory() as tmp:
        lib = Path(tmp) / "lib"
        lib.mkdir()
        _write_library(lib, scenes, gaussians, seed)
        sizes = [len(__import__("recon3d").load_ply(p)) for p in sorted(lib.glob("*.ply"))[:3]]
        # stage timers around the indexer's own functions
        spent = {"load": 0.0, "thumbnails": 0.0, "text": 0.0}
        real_load, real_views, real_commit = index_module.load_entry, index_module.embed_scene_views, index_module._commit

        def timed(name, fn):
            def run(*a, **k):
                t = time.perf_counter()
                try:
                    return fn(*a, **k)
                finally:
                    spent[name] += time.perf_counter() - t
            return run

        index_module.load_entry = timed("load", real_load)
        index_module.embed_scene_views = timed("thumbnails", real_views)
        index_module._commit = timed("text", real_commit)
        try:
            # warm the render kernels (built or loaded once per process) outside the timing
            from recon3d.library.thumbnails import orbit_cameras, render_thumbnails

            warm = __import__("recon3d").load_ply(sorted(lib.glob("*.ply"))[0])
            render_thumbnails(warm, orbit_cameras(warm))
            t0 = time.perf_counter()
            report = index_module.index_library(lib, progress=False, embedder=embedder)
            wall = time.perf_counter() - t0
            t0 = time.perf_counter()
            again = index_module.index_library(lib, progress=False, embedder=embedder)
            rescan = time.perf_counter() - t0
        finally:
            index_module.load_entry, index_module.embed_scene_views, index_module._commit = real_load, real_views, real_commit
    assert len(report.new) == scenes and not report.failed and again.unchanged == scenes
    return {
        "scenes": scenes, "gaussians_per_scene": sizes, "threads": threads, "wall_s": round(wall, 2),
        "scenes_per_s": round(scenes / wall, 2), "target_scenes_per_s": 10,
        "stage_s": {k: round(v, 2) for k, v in spent.items()},
        "other_s (discovery, hashing, SQLite, vector index)": round(wall - sum(spent.values()), 2),
        "rescan_unchanged_s": round(rescan, 3),
    }


def _heldout_caption(spec, rng: np.random.Generator) -> str:
    """A caption of ``spec`` in wording never trained on (held-out object template and wrapper)."""
    from recon3d.generation.grammar import HELDOUT_OBJECT_TEMPLATES, HELDOUT_WRAPPERS, Rules, caption

    template = HELDOUT_OBJECT_TEMPLATES[int(rng.integers(len(HELDOUT_OBJECT_TEMPLATES)))]
    wrapper = HELDOUT_WRAPPERS[int(rng.integers(len(HELDOUT_WRAPPERS)))]
    return caption(spec, rng, Rules(pairs=set()), template=template, wrapper=wrapper).text


def describe_right(described: dict | None, spec, layout: list[dict]) -> dict:
    """Judge a description (a grammar scene graph) against the true scene graph and layout."""
    from recon3d.generation.grammar import COLOUR_RGB, Scene, delta_e
    from recon3d.generation.judge import COLOUR_TOLERANCE, relation_holds
    from recon3d.generation.shapes import NATURAL_COLOURS

    if described is None:
        return {"objects": False, "colours": False, "relations": False, "all": False}
    got = Scene.from_json(described)

    def colour_of(thing) -> str:
        return thing.colour or NATURAL_COLOURS.get(thing.shape, ("gray",))[0]

    want = sorted((g.shape, g.count) for g in spec.groups)
    objects = sorted((g.shape, g.count) for g in got.groups) == want
    colours, relations = False, False
    if objects:
        # pair each described group with the true group of its shape and count (closest colour first)
        free = list(range(len(spec.groups)))
        match = {}
        for gi, g in enumerate(got.groups):
            options = [j for j in free if (spec.groups[j].shape, spec.groups[j].count) == (g.shape, g.count)]
            j = min(options, key=lambda j: float(delta_e(np.array(COLOUR_RGB[colour_of(g)]),
                                                          np.array(COLOUR_RGB[colour_of(spec.groups[j])]))))
            match[gi] = j
            free.remove(j)
        colours = all(float(delta_e(np.array(COLOUR_RGB[colour_of(g)]), np.array(COLOUR_RGB[colour_of(spec.groups[match[gi]])])))
                      <= COLOUR_TOLERANCE for gi, g in enumerate(got.groups))
        centres = {}
        for obj in layout:
            centres.setdefault(obj["group"], []).append(obj["centre"])
        cent = {g: np.array(c, dtype=float) for g, c in centres.items()}
        if len(spec.groups) == 1:
            relations = not got.relations  # one group: nothing to relate
        else:
            relations = bool(got.relations) and all(
                relation_holds(r.relation, cent[match[r.subject]], [cent[match[a]] for a in r.anchors]) for r in got.relations)
    return {"objects": objects, "colours": bool(colours), "relations": bool(relations),
            "all": bool(objects and colours and relations)}


def bench_recall(scenes: int, describe_n: int, seed: int = 7919, per_object: int = 128) -> dict:
    """Text->scene and image->scene recall over composed scenes of unseen seeds, and describe accuracy."""
    import math

    from recon3d.generation.composer import compose_grammar
    from recon3d.generation.data import features_to_scene
    from recon3d.generation.grammar import random_scene, validation_rules
    from recon3d.generation.views import random_view, render_view, scene_frame
    from recon3d.library.embed import TextEmbedder, fuse, query_image_embedding, query_vector
    from recon3d.understand.describe import describe_embeddings, thresholds
    from recon3d.understand.encode import encode_scene, encode_views

    torch.set_num_threads(1)
    rules = validation_rules()
    embedder = TextEmbedder()
    vectors, captions, image_q, specs, layouts, sv, scenes_kept = [], [], [], [], [], [], []
    t0 = time.perf_counter()
    for k in range(scenes):
        rng = np.random.default_rng([seed, k])
        spec = random_scene(rng, rules)
        feats, _, layout = compose_grammar(spec, per_object, rng)
        scene = features_to_scene(torch.from_numpy(feats))
        s = encode_scene(scene)
        centre, radius = scene_frame(scene)
        views = torch.stack([render_view(scene, 32, 2 * math.pi * v / 3, 0.35, centre=centre, radius=radius)[0]
                             for v in range(3)])
        i = encode_views(views)
        az, el = random_view(rng)
        image_q.append(query_image_embedding(render_view(scene, 32, az, el)[0]))  # as `search --image` embeds it
        vectors.append(fuse(None, s, i))
        captions.append(_heldout_caption(spec, rng))
        specs.append(spec)
        layouts.append(layout)
        sv.append((s, i))
        scenes_kept.append(scene if spec.num_objects <= 2 else None)  # describe checks these against their Gaussians
    t_scenes = time.perf_counter() - t0
    lib = np.stack(vectors)
    enc = embedder.embed(captions)
    text_q = np.stack([query_vector(enc[c], None) for c in captions])
    img_q = np.stack([query_vector(None, q) for q in image_q])

    def ranks(q: np.ndarray) -> np.ndarray:
        scores = q @ lib.T
        own = scores[np.arange(len(q)), np.arange(len(q))]
        return (scores > own[:, None]).sum(1)  # 0 = first

    rt, ri = ranks(text_q), ranks(img_q)
    kinds = [("single" if s.num_objects == 1 and len(s.groups) == 1 else f"{s.num_objects} objects") for s in specs]
    per_kind = {}
    for kind in sorted(set(kinds)):
        m = np.array([x == kind for x in kinds])
        per_kind[kind] = {"n": int(m.sum()), "text_r@1": round(float((rt[m] == 0).mean()), 3),
                          "image_r@1": round(float((ri[m] == 0).mean()), 3)}
    out = {
        "scenes": scenes, "seed": seed, "gaussians_per_object": per_object,
        "text_recall@1": round(float((rt == 0).mean()), 4), "text_recall@5": round(float((rt < 5).mean()), 4),
        "image_recall@1": round(float((ri == 0).mean()), 4), "image_recall@5": round(float((ri < 5).mean()), 4),
        "targets": {"text_recall@1": 0.80, "text_recall@5": 0.95, "image_recall@1": 0.90, "describe_all_right": 0.85},
        "per_kind": per_kind, "scenes_s": round(t_scenes, 1),
        "examples": [{"caption": c, "text_rank": int(r)} for c, r in list(zip(captions, rt))[:8]],
    }
    limits = thresholds()
    small = [k for k, s in enumerate(specs) if s.num_objects <= 2][:describe_n]
    judged, examples, fam, known = [], [], [], []
    t0 = time.perf_counter()
    for k in small:
        d = describe_embeddings(*sv[k], *limits, scene=scenes_kept[k])
        verdict = describe_right(d.structure, specs[k], layouts[k])
        judged.append(verdict)
        fam.append(d.familiarity)
        known.append(d.structure)
        if len(examples) < 12:
            from recon3d.understand.describe import plain_caption

            examples.append({"truth": plain_caption(specs[k]), "described": d.text, "verdict": verdict})
    if judged:
        out["describe"] = {
            "scenes": len(judged), "thresholds (familiarity, agreement)": list(limits),
            "described": round(float(np.mean([d_ is not None for d_ in known])), 4),
            **{f"{key}_right": round(float(np.mean([j[key] for j in judged])), 4) for key in ("objects", "colours", "relations", "all")},
            "familiarity_min": round(float(np.min(fam)), 3), "familiarity_p01": round(float(np.percentile(fam, 1)), 3),
            "familiarity_median": round(float(np.median(fam)), 3), "seconds": round(time.perf_counter() - t0, 1),
            "examples": examples,
        }
    return out


def main() -> int:
    """Run the chosen benchmark(s) and write their JSON."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("which", choices=("latency", "indexing", "recall", "all"))
    p.add_argument("--describe", type=int, default=200, help="recall: one- and two-object scenes to describe")
    p.add_argument("--scenes", type=int, default=None, help="scenes (latency: 100000, indexing: 40)")
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--gaussians", type=int, default=50_000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--name", default="", help="suffix of the result file")
    args = p.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = {}
    if args.which in ("latency", "all"):
        out["latency"] = bench_latency(args.scenes or 100_000, args.queries)
        print(json.dumps(out["latency"], indent=1))
    if args.which in ("indexing", "all"):
        out["indexing"] = bench_indexing(args.scenes or 40, args.gaussians, args.threads)
        print(json.dumps(out["indexing"], indent=1))
    if args.which in ("recall", "all"):
        out["recall"] = bench_recall(args.scenes or 1000, args.describe)
        print(json.dumps(out["recall"], indent=1))
    out["machine"] = _machine()
    out["command"] = "python benchmarks/search.py " + " ".join(sys.argv[1:])
    path = RESULTS / f"search_{args.which}{'_' + args.name if args.name else ''}.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
