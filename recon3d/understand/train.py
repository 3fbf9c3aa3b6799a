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


def structure_labels(specs: list[str]) -> dict[str, np.ndarray]:
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
        spec = Scene.from_json(json.loads(str(js)))
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


def train(data: Path, out: Path, time_budget: float, batch: int = 64, lr: float = 2e-3, save_every: int = 25,
          val_chunks: int = 2, max_steps: int = 100_000) -> None:
    """Train until ``time_budget`` seconds pass (or ``max_steps``); resumes from ``out/checkpoint.pt``."""
    from ..io_utils import atomic_open
    from .data import load_chunks

    torch.set_num_threads(1)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = out / "checkpoint.pt"
    torch.manual_seed(0)
    model = Encoders(CONFIG)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    step = 0
    if ckpt.is_file():
        state = torch.load(ckpt, map_location="cpu", weights_only=False)
        missing, _ = model.load_state_dict(state["model"], strict=False)
        if missing:  # a checkpoint from before the structure heads: keep the encoders, a fresh optimiser
            print(f"warm start without {len(missing)} new tensors (the structure heads)", flush=True)
        else:
            opt.load_state_dict(state["opt"])
        step = state["step"]
        print(f"resumed at step {step}", flush=True)
    log = open(out / "train.log", "a")
    t_start, n_chunks, d = time.time(), -1, {}
    while time.time() - t_start < time_budget and step < max_steps:
        chunks = len(list(data.glob("chunk-*.npz")))
        if chunks != n_chunks:  # new data: reload (the last chunks are the validation set)
            d, n_chunks = load_chunks(data), chunks
            n_val = min(val_chunks * 32, len(d["counts"]) // 5)
            n_train = len(d["counts"]) - n_val
            labels = structure_labels(list(d["specs"]))
        rng = np.random.default_rng([1, step])
        idx = rng.choice(n_train, size=min(batch, n_train), replace=False)
        rows = batch_rows(d["rows"], d["counts"], idx, rng)
        text = torch.from_numpy(d["text"][idx].astype(np.float32))
        views = views_tensor(d["views"][idx])
        model.train()
        s, v = model.scene(rows), model.image(views)
        scale = model.log_scale.exp().clamp(max=100)
        loss = info_nce(s, text, scale) + info_nce(v, text, scale) + 0.5 * info_nce(s, v, scale)
        lab = {k: torch.from_numpy(x[idx]) for k, x in labels.items()}
        head_loss = structure_loss(model.heads(s, v), lab)
        loss = loss + 0.5 * head_loss
        warm = min(1.0, (step + 1) / 50)
        for g in opt.param_groups:
            g["lr"] = lr * warm
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        if step % save_every == 0:
            model.eval()
            with torch.no_grad():
                vi = np.arange(n_train, n_train + n_val)
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
            line = {"step": step, "head_loss": round(float(head_loss.detach()), 4), "loss": round(float(loss.detach()), 4), "scale": round(float(scale.detach()), 2), "train_scenes": n_train,
                    "val_scenes": n_val, "val_recall@1": {k: round(x, 3) for k, x in rec.items()},
                    "elapsed_s": round(time.time() - t_start, 1)}
            print(json.dumps(line), flush=True)
            log.write(json.dumps(line) + "\n")
            log.flush()
            with atomic_open(ckpt, "wb") as f:
                torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step, "config": CONFIG}, f)


def export(out: Path, dest: Path = WEIGHTS_FILE) -> None:
    """Write the checkpoint's encoders as the shipped weights (float16)."""
    state = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=False)
    model = Encoders(state["config"])
    model.load_state_dict(state["model"])
    lines = (out / "train.log").read_text().splitlines() if (out / "train.log").is_file() else []
    info = {"step": state["step"], "last": json.loads(lines[-1]) if lines else None}
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
    ap.add_argument("--export", action="store_true", help="write the shipped weights from the checkpoint and stop")
    a = ap.parse_args()
    if a.export:
        export(Path(a.out))
        return
    train(Path(a.data), Path(a.out), a.time_budget, a.batch, a.lr)


if __name__ == "__main__":
    main()
