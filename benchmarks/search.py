"""Library search benchmarks (issue 19, item 5): search latency at 100k indexed scenes and the indexing rate.

    python benchmarks/search.py latency [--scenes 100000] [--queries 200]
    python benchmarks/search.py indexing [--scenes 40] [--gaussians 50000] [--threads 2]
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

    from recon3d.library.embed import DIM, EMBEDDING_VERSION, IMAGE_DIM, PART_WEIGHT, TEXT_DIM, TextEmbedder
    from recon3d.library.store import LibraryStore

    rng = np.random.default_rng(seed)
    text = _unit_rows(rng, scenes, TEXT_DIM)
    image = _unit_rows(rng, scenes, IMAGE_DIM)
    vectors = np.concatenate([PART_WEIGHT * text, PART_WEIGHT * image], 1).astype(np.float32)
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


def main() -> int:
    """Run the chosen benchmark(s) and write their JSON."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("which", choices=("latency", "indexing", "all"))
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
    out["machine"] = _machine()
    out["command"] = "python benchmarks/search.py " + " ".join(sys.argv[1:])
    path = RESULTS / f"search_{args.which}{'_' + args.name if args.name else ''}.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
