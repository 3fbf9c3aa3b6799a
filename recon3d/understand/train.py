"""Train the scene and image encoders contrastively against the composer's captions (InfoNCE).

Three symmetric InfoNCE terms over a batch: scene↔caption, view↔caption, scene↔view. The captions'
MiniLM embeddings are fixed (the target space); the encoders move. One torch thread; the checkpoint
(model, optimiser, step) is saved atomically every ``--save-every`` steps and a run resumes from it.
New data chunks (``data.py``, built alongside) are picked up as they appear.

    python -m recon3d.understand.train --data runs/understand/data --out runs/understand --time-budget 1800
    python -m recon3d.understand.train --out runs/understand --export   # write the shipped weights
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .features import NUM_POINTS
from .model import WEIGHTS_FILE, Encoders, save_encoders

CONFIG = {"scene": {"width": 48, "heads": 4, "inducing": 8, "blocks": 2, "seeds": 4}, "image": {"width": 24}}


def views_tensor(views: np.ndarray) -> torch.Tensor:
    """uint8 B×S×S×3 -> float B×3×S×S in [0, 1]."""
    return torch.from_numpy(views).permute(0, 3, 1, 2).float() / 255.0


def batch_rows(rows: np.ndarray, counts: np.ndarray, idx: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
    """A fresh random subset of NUM_POINTS rows for each scene of the batch (augmentation)."""
    out = np.empty((len(idx), NUM_POINTS, rows.shape[-1]), dtype=np.float32)
    for j, i in enumerate(idx):
        n = int(counts[i])
        out[j] = rows[i, rng.choice(n, NUM_POINTS, replace=n < NUM_POINTS)]
    return torch.from_numpy(out)


def structure_labels(specs: list[str], cache: dict | None = None) -> dict[str, np.ndarray]:
    """Head targets from scene graphs (JSON): kind, the subject's and the anchor's shape, count and colour
    (CIELAB / 100), the relation; -1 where a target does not apply."""
    from ..generation.grammar import COLOUR_RGB, COMPOSITE_SHAPES, PRIMITIVE_SHAPES, Scene, srgb_to_lab
    from ..generation.shapes import NATURAL_COLOURS
    from .model import FAMILIES, HEAD_RELATIONS, MAX_COUNT

    shapes = PRIMITIVE_SHAPES + COMPOSITE_SHAPES
    n = len(specs)
    out = {"family": np.zeros(n, np.int64), "shape": -np.ones((n, 2), np.int64), "count": -np.ones((n, 2), np.int64),
           "colour": np.zeros((n, 2, 3), np.float32), "colour_mask": np.zeros((n, 2), np.float32),
           "relation": -np.ones(n, np.int64)}
    for k, js in enumerate(specs):
        js = str(js)
        if cache is not None and js in cache:  # a reload: the scenes seen before keep their labels
            for key, arr in out.items():
                arr[k] = cache[js][key]
            continue
        spec = Scene.from_json(json.loads(js))
        g = spec.groups
        if len(g) == 1:
            fam, groups = ("single" if g[0].count == 1 else "group"), [g[0]]
        elif len(g) == 2 and len(spec.relations) == 1 and spec.relations[0].relation in HEAD_RELATIONS:
            r = spec.relations[0]
            fam, groups = "pair", [g[r.subject], g[r.anchors[0]]]
            out["relation"][k] = HEAD_RELATIONS.index(r.relation)
        else:
            fam, groups = "other", []
        out["family"][k] = FAMILIES.index(fam)
        for j, t in enumerate(groups):
            out["shape"][k, j] = shapes.index(t.shape)
            out["count"][k, j] = min(t.count, MAX_COUNT) - 1
            colour = t.colour or NATURAL_COLOURS.get(t.shape, ("gray",))[0]
            out["colour"][k, j] = srgb_to_lab(np.asarray(COLOUR_RGB[colour]))[None][0] / 100.0
            out["colour_mask"][k, j] = 1.0
        if cache is not None:
            cache[js] = {key: arr[k].copy() for key, arr in out.items()}
    return out


def structure_loss(pred: dict[str, torch.Tensor], lab: dict[str, torch.Tensor]) -> torch.Tensor:
    """Cross-entropy of the classification heads (ignoring -1) and the masked squared error of the colours."""
    ce = nn.functional.cross_entropy
    loss = ce(pred["family"], lab["family"])
    loss = loss + ce(pred["shape"].flatten(0, 1), lab["shape"].flatten(), ignore_index=-1)
    loss = loss + ce(pred["count"].flatten(0, 1), lab["count"].flatten(), ignore_index=-1)
    if (lab["relation"] >= 0).any():
        loss = loss + ce(pred["relation"], lab["relation"], ignore_index=-1)
    m = lab["colour_mask"]
    err = ((pred["colour"] - lab["colour"]) ** 2).sum(-1)
    return loss + 10.0 * (err * m).sum() / m.sum().clamp_min(1.0)


def info_nce(a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE of matching rows of two unit B×D batches."""
    logits = scale * a @ b.T
    target = torch.arange(len(a))
    return 0.5 * (nn.functional.cross_entropy(logits, target) + nn.functional.cross_entropy(logits.T, target))


def recall_at_1(a: torch.Tensor, b: torch.Tensor) -> float:
    """Share of rows of ``a`` whose nearest row of ``b`` is its own."""
    return float(((a @ b.T).argmax(1) == torch.arange(len(a))).float().mean())


def shifted_views(views: np.ndarray, rng: np.random.Generator, p: float = 0.5) -> np.ndarray:
    """Augmentation: about half the views shifted by one pixel in x and/or y (white comes in at the edge)."""
    out = views.copy()
    for j in np.flatnonzero(rng.random(len(views)) < p):
        dy, dx = rng.integers(-1, 2, size=2)
        padded = np.pad(views[j], ((1, 1), (1, 1), (0, 0)), constant_values=255)
        out[j] = padded[1 + dy:1 + dy + views.shape[1], 1 + dx:1 + dx + views.shape[2]]
    return out


def pick_batch(n_train: int, size: int, buckets: dict, bucket_of: np.ndarray, rng: np.random.Generator,
               hard: float = 0.5) -> np.ndarray:
    """``size`` distinct training scenes; a share ``hard`` of them come in pairs that share their kind and
    their groups' shapes (hard negatives: the pair differs in colour, count, size or relation only)."""
    chosen: list[int] = []
    seen: set[int] = set()
    for a in rng.choice(n_train, size=int(size * hard) // 2, replace=False):
        if a in seen:
            continue
        mates = buckets[bucket_of[a]]
        b = int(mates[rng.integers(len(mates))]) if len(mates) > 1 else -1
        chosen.append(int(a))
        seen.add(int(a))
        if b >= 0 and b not in seen:
            chosen.append(b)
            seen.add(b)
    while len(chosen) < size:
        for x in rng.choice(n_train, size=size, replace=False):
            if int(x) not in seen and len(chosen) < size:
                chosen.append(int(x))
                seen.add(int(x))
    return np.array(chosen[:size])


def next_utc(hhmm: str, now: float) -> float:
    """Epoch seconds of the next UTC ``HH:MM`` after ``now`` (today's, or tomorrow's once today's has passed:
    a run started before midnight that decays until after it)."""
    import calendar

    hh, mm = (int(x) for x in hhmm.split(":"))
    day = time.gmtime(now)
    at = float(calendar.timegm((day.tm_year, day.tm_mon, day.tm_mday, hh, mm, 0)))
    return at + 86400.0 if at < now else at


def lr_at(now: float, start: float, until: float, peak: float, floor: float) -> float:
    """Cosine decay by the wall clock from ``peak`` at ``start`` to ``floor`` at ``until`` (then ``floor``)."""
    frac = min(1.0, max(0.0, (now - start) / max(until - start, 1.0)))
    return floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi * frac))


def train(data: Path, out: Path, time_budget: float, batch: int = 64, lr: float = 2e-3, save_every: int = 25,
          val_chunks: int = 2, max_steps: int = 100_000, until: float | None = None, lr_floor: float = 1e-4,
          hard: float = 0.0, shift: float = 0.0, reload_every: int = 4, snapshot_s: float = 900.0,
          val_file: Path | None = None, val_every: int = 100) -> None:
    """Train until ``time_budget`` seconds pass (or ``max_steps``); resumes from ``out/checkpoint.pt``.

    ``until`` (epoch seconds): decay the learning rate by a cosine from ``lr`` now to ``lr_floor`` then (the
    decay's start and end are kept in the checkpoint, so a resumed run goes on along the same curve).
    ``hard``: the share of each batch drawn as hard-negative pairs; ``shift``: the share of views shifted.
    ``val_file`` (``validate.py``'s set): every ``val_every`` steps, the search recall on it is logged too.
    The validation chunks are the last ``val_chunks`` at the run's first load, kept in the checkpoint, so
    chunks built later are training data and the validation figures stay comparable."""
    from ..io_utils import atomic_open
    from .data import load_chunks

    torch.set_num_threads(1)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = out / "checkpoint.pt"
    torch.manual_seed(0)
    model = Encoders(CONFIG)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    step, sched, val_names = 0, None, None
    if ckpt.is_file():
        state = torch.load(ckpt, map_location="cpu", weights_only=False)
        missing, _ = model.load_state_dict(state["model"], strict=False)
        if missing:  # a checkpoint from before the structure heads: keep the encoders, a fresh optimiser
            print(f"warm start without {len(missing)} new tensors (the structure heads)", flush=True)
        else:
            opt.load_state_dict(state["opt"])
        step = state["step"]
        sched, val_names = state.get("schedule"), state.get("val_chunks")
        print(f"resumed at step {step}", flush=True)
    if until is not None and (sched is None or sched["until"] != until):
        sched = {"start": time.time(), "until": until, "peak": lr, "floor": lr_floor}
    log = open(out / "train.log", "a")
    t_start, n_files, d, file_cache, label_cache = time.time(), -1, {}, {}, {}
    last_snapshot = time.time()
    val_set = None
    if val_file is not None and Path(val_file).is_file():
        from .validate import load_val

        val_set = load_val(Path(val_file))
    while time.time() - t_start < time_budget and step < max_steps:
        files = len(list(data.glob("*.npz")))
        if n_files < 0 or files >= n_files + reload_every:  # new data (chunks, extra captions): reload
            d, n_files = load_chunks(data, file_cache), files
            names = list(d["chunk_names"])
            if val_names is None:
                val_names = names[-val_chunks:]
            is_val = np.isin(d["chunk_of"], [names.index(v) for v in val_names])
            train_idx, val_idx = np.flatnonzero(~is_val), np.flatnonzero(is_val)
            n_train, n_val = len(train_idx), len(val_idx)
            labels = structure_labels(list(d["specs"]), label_cache)
            key = [(int(f), int(a), int(b)) for f, (a, b) in zip(labels["family"][train_idx], labels["shape"][train_idx])]
            codes = {k: i for i, k in enumerate(sorted(set(key)))}
            bucket_of = np.array([codes[k] for k in key])
            buckets = {c: np.flatnonzero(bucket_of == c) for c in codes.values()}
            print(f"data: {n_train} training scenes ({int((d['alt_n'][train_idx] > 0).sum())} with extra captions, "
                  f"{int((d['more_n'][train_idx] > 0).sum())} with paraphrases, {int((d['views_n'][train_idx] > 0).sum())} "
                  f"with extra views), {n_val} validation", flush=True)
        rng = np.random.default_rng([1, step])
        idx = train_idx[pick_batch(n_train, min(batch, n_train), buckets, bucket_of, rng, hard)]
        rows = batch_rows(d["rows"], d["counts"], idx, rng)
        # one caption of each scene's 1 + extra + paraphrases (0: the chunk's, then the extra, then ours)
        alt_n, more_n = d["alt_n"][idx], d.get("more_n", np.zeros(len(idx), np.int64))[idx]
        which = rng.integers(0, 1 + alt_n + more_n)
        text = d["text"][idx].astype(np.float32)
        pick = (which > 0) & (which <= alt_n)
        text[pick] = d["alt"][idx[pick], which[pick] - 1]
        pick = which > alt_n
        if pick.any():
            text[pick] = d["more_text"][idx[pick], which[pick] - 1 - alt_n[pick]]
        text = torch.from_numpy(text)
        vraw = d["views"][idx].copy()  # one of each scene's views (the chunk's, or one of the extra ones)
        views_n = d.get("views_n", np.zeros(len(idx), np.int64))[idx]
        vw = rng.integers(0, 1 + views_n)
        pick = vw > 0
        if pick.any():
            vraw[pick] = d["more_views"][idx[pick], vw[pick] - 1]
        views = views_tensor(shifted_views(vraw, rng, shift) if shift > 0 else vraw)
        model.train()
        s, v = model.scene(rows), model.image(views)
        scale = model.log_scale.exp().clamp(max=100)
        loss = info_nce(s, text, scale) + info_nce(v, text, scale) + 0.5 * info_nce(s, v, scale)
        lab = {k: torch.from_numpy(x[idx]) for k, x in labels.items()}
        head_loss = structure_loss(model.heads(s, v), lab)
        loss = loss + 0.5 * head_loss
        if sched is not None:
            rate = lr_at(time.time(), sched["start"], sched["until"], sched["peak"], sched["floor"])
        else:
            rate = lr * min(1.0, (step + 1) / 50)
        for g in opt.param_groups:
            g["lr"] = rate
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        if step % save_every == 0:
            model.eval()
            with torch.no_grad():
                vi = val_idx
                vs = model.scene(batch_rows(d["rows"], d["counts"], vi, np.random.default_rng(0)))
                vv = model.image(views_tensor(d["views"][vi]))
                vt = torch.from_numpy(d["text"][vi].astype(np.float32))
                rec = {"text->scene": recall_at_1(vt, vs), "text->view": recall_at_1(vt, vv),
                       "view->scene": recall_at_1(vv, vs)}
                pred = model.heads(vs, vv)
                fam = torch.from_numpy(labels["family"][vi])
                rec["family"] = float((pred["family"].argmax(1) == fam).float().mean())
                sh = torch.from_numpy(labels["shape"][vi, 0])
                rec["shape0"] = float((pred["shape"][:, 0].argmax(1) == sh)[sh >= 0].float().mean())
                rel = torch.from_numpy(labels["relation"][vi])
                if (rel >= 0).any():
                    rec["relation"] = float((pred["relation"].argmax(1) == rel)[rel >= 0].float().mean())
            if val_set is not None and step % val_every == 0:
                from .validate import evaluate

                rec.update({f"search_{k}": x for k, x in evaluate(model, val_set).items()})
            line = {"step": step, "head_loss": round(float(head_loss.detach()), 4), "loss": round(float(loss.detach()), 4), "scale": round(float(scale.detach()), 2), "train_scenes": n_train,
                    "val_scenes": n_val, "val_recall@1": {k: round(x, 3) for k, x in rec.items()},
                    "lr": round(rate, 6), "elapsed_s": round(time.time() - t_start, 1)}
            print(json.dumps(line), flush=True)
            log.write(json.dumps(line) + "\n")
            log.flush()
            state = {"model": model.state_dict(), "opt": opt.state_dict(), "step": step, "config": CONFIG,
                     "schedule": sched, "val_chunks": val_names}
            with atomic_open(ckpt, "wb") as f:
                torch.save(state, f)
            if time.time() - last_snapshot > snapshot_s:  # keep a few along the way (to pick from, or go back to)
                (out / "snapshots").mkdir(exist_ok=True)
                with atomic_open(out / "snapshots" / f"step-{step:06d}.pt", "wb") as f:
                    torch.save(state, f)
                last_snapshot = time.time()
    val_set = None
    if val_file is not None and Path(val_file).is_file():
        from .validate import load_val

        val_set = load_val(Path(val_file))


def export(out: Path, dest: Path = WEIGHTS_FILE, checkpoint: Path | None = None) -> None:
    """Write a checkpoint's encoders (default ``out/checkpoint.pt``) as the shipped weights (float16), with
    the training log's line of its step."""
    state = torch.load(checkpoint or out / "checkpoint.pt", map_location="cpu", weights_only=False)
    model = Encoders(state["config"])
    model.load_state_dict(state["model"])
    lines = (out / "train.log").read_text().splitlines() if (out / "train.log").is_file() else []
    mine = [json.loads(x) for x in lines if x.strip() and json.loads(x).get("step") == state["step"]]
    info = {"step": state["step"], "last": mine[-1] if mine else None}
    dest.parent.mkdir(parents=True, exist_ok=True)
    save_encoders(model, dest, info)
    print(f"wrote {dest} ({dest.stat().st_size / 1e6:.2f} MB, step {state['step']})")


def main() -> None:
    """Command line."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="runs/understand/data")
    ap.add_argument("--out", default="runs/understand")
    ap.add_argument("--time-budget", type=float, default=1800.0)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--until", default=None, help="UTC time HH:MM (the next one): decay the learning rate to --lr-floor by then")
    ap.add_argument("--lr-floor", type=float, default=1e-4)
    ap.add_argument("--hard", type=float, default=0.0, help="share of each batch drawn as hard-negative pairs")
    ap.add_argument("--shift", type=float, default=0.0, help="share of views shifted by a pixel (augmentation)")
    ap.add_argument("--reload-every", type=int, default=4, help="reload the data when this many new files appeared")
    ap.add_argument("--snapshot-s", type=float, default=900.0, help="keep a copy of the checkpoint this often (seconds)")
    ap.add_argument("--val", default=None, help="validate.py's set: log the search recall on it every 100 steps")
    ap.add_argument("--export", action="store_true", help="write the shipped weights from the checkpoint and stop")
    ap.add_argument("--checkpoint", default=None, help="with --export: this checkpoint (a snapshot) instead of OUT/checkpoint.pt")
    a = ap.parse_args()
    if a.export:
        export(Path(a.out), checkpoint=Path(a.checkpoint) if a.checkpoint else None)
        return
    until = next_utc(a.until, time.time()) if a.until else None
    train(Path(a.data), Path(a.out), a.time_budget, a.batch, a.lr, until=until, lr_floor=a.lr_floor, hard=a.hard,
          shift=a.shift, reload_every=a.reload_every, snapshot_s=a.snapshot_s, val_file=Path(a.val) if a.val else None)


if __name__ == "__main__":
    main()
