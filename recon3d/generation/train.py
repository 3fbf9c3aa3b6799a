"""Training the generator: ``recon3d train-generator --config configs/generator-small.yaml``.

Runs alone or under ``torchrun`` (DistributedDataParallel; gloo on the CPU, NCCL on GPUs). Checkpoints
atomically every few steps and resumes from the last one; a wall-clock budget stops training cleanly.
"""

from __future__ import annotations

import copy
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from ..errors import InputError
from ..io_utils import atomic_open, atomic_write_text
from .config import GeneratorConfig, as_config, find_config, load_config
from .model import ModelConfig, SetFlowTransformer, build_model

__all__ = ["export_weights", "find_config", "load_config", "train"]

def _lr_at(step: int, cfg: GeneratorConfig) -> float:
    t = cfg.train
    warm = max(1, t.warmup)
    if step < warm:
        return t.lr * (step + 1) / warm
    # cosine to 10 % of the peak over the planned steps
    frac = min(1.0, (step - warm) / max(1, t.steps - warm))
    return t.lr * (0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * frac)))


def _init_distributed() -> tuple[int, int, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
    rank = dist.get_rank() if dist.is_initialized() else 0
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    return rank, world, device


def _plain(value):
    """Tensors and plain Python types only, so the checkpoint loads with ``weights_only=True``."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value)
    if isinstance(value, np.generic):
        return value.item()
    return value


def save_checkpoint(path: Path, state: dict) -> None:
    """torch.save through a temporary file, so a crash never leaves a half-written checkpoint."""
    with atomic_open(path, "wb") as f:
        torch.save(_plain(state), f)


def train(cfg: GeneratorConfig | dict, *, resume: bool = True, progress: bool = True) -> Path:
    """Train the generator described by ``cfg``; returns the run directory (``last.pt``, ``config.json``)."""
    from ..progress import Progress
    from .data import build_dataset, load_dataset

    rank, world, device = _init_distributed()
    cfg = as_config(cfg)
    tcfg, dcfg = cfg.train, cfg.data
    if tcfg.threads:
        torch.set_num_threads(int(tcfg.threads))
    out = Path(tcfg.out)
    data_dir = Path(dcfg.dir)
    model_cfg = cfg.model
    slot_queries = bool(model_cfg.object_queries)
    if rank == 0 and not (data_dir / "info.json").is_file():
        print(f"building the training set in {data_dir} (first run)")
        if slot_queries:
            from .bank import build_bank

            build_bank(data_dir, num_scenes=dcfg.num_scenes, seed=dcfg.seed, progress=progress,
                       kind_weights=dcfg.kind_weights, wide=dcfg.wide_wording, base=dcfg.base)
        else:
            build_dataset(data_dir, num_pairs=dcfg.num_pairs, seed=dcfg.seed, progress=progress)
    if dist.is_initialized():
        dist.barrier()
    if slot_queries:
        from .bank import load_bank

        data = load_bank(data_dir)
    else:
        data = load_dataset(data_dir, dcfg.mix)
    torch.manual_seed(tcfg.seed)  # identical initial weights on every rank
    model = build_model(model_cfg).to(device)
    ema = copy.deepcopy(model).eval()
    for p in ema.parameters():
        p.requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=tcfg.lr, weight_decay=tcfg.weight_decay, betas=(0.9, 0.99))
    step = 0
    ckpt_path = out / "last.pt"
    if resume and ckpt_path.is_file():
        state = torch.load(ckpt_path, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["optimizer"])
        step = int(state["step"])
        if rank == 0:
            print(f"resuming from {ckpt_path} at step {step}")
    if step == 0 and tcfg.init_from:
        if slot_queries:
            copied = _warm_start_matching(model, ema, Path(tcfg.init_from))
            if rank == 0:
                print(f"warm start from {tcfg.init_from}: {copied} tensors of matching name and shape")
        else:
            _warm_start(model, ema, Path(tcfg.init_from))
            if rank == 0:
                print(f"warm start from {tcfg.init_from}")
    table = None
    if model_cfg.slots and not slot_queries:
        from .conditioning import phrase_table_for

        # rank 0 encodes the phrases once (cached beside the data); the others read the cache
        if rank == 0:
            table = phrase_table_for(data_dir, data.captions, data.info["encoder"])
        if dist.is_initialized():
            dist.barrier()
        if rank != 0:
            table = phrase_table_for(data_dir, data.captions, data.info["encoder"])
    net = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "config.json", json.dumps(cfg.to_dict(), indent=1))
    mean, std = data.mean, data.std
    budget = tcfg.time_budget_minutes
    deadline = time.time() + 60 * float(budget) if budget else None
    log_path = out / "log.jsonl"
    losses: list[float] = []
    parts: dict[str, float] = {}
    attr_losses: list[float] = []
    stop_requested = _StopRequest()
    with stop_requested, Progress(enabled=progress and rank == 0, unit="steps") as bar:  # plain timed lines when piped
        task = bar.add_task("training the generator", total=tcfg.steps, completed=step)
        while step < tcfg.steps:
            # a fresh stream per (seed, rank, step): resuming continues the same data order
            rng = np.random.default_rng([tcfg.seed, rank, step])
            gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
            for group in opt.param_groups:
                group["lr"] = _lr_at(step, cfg)
            if slot_queries:
                from .flow import slot_flow_loss

                b = data.sample(tcfg.batch_size, dcfg.num_gaussians, rng, image_share=tcfg.image_share,
                                object_mix=dcfg.object_mix)
                loss, _, _ = slot_flow_loss(
                    net, b["x"], b["slots"], b["num_objects"], generator=gen, text_tokens=b["text_tokens"],
                    text_mask=b["text_mask"], images=b["images"], use_text=b["use_text"], use_image=b["use_image"],
                    cond_drop=tcfg.cond_drop, ot_pairing=tcfg.ot_pairing, exist_weight=tcfg.exist_weight,
                    attributes=b, attribute_weight=tcfg.attribute_weight, parts=parts,
                )
            else:
                loss = _legacy_loss(net, data, table, tcfg, dcfg, rng, gen, mean, std)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if tcfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg.grad_clip)
            opt.step()
            with torch.no_grad():
                decay = min(tcfg.ema, (1 + step) / (10 + step))
                for pe, pm in zip(ema.parameters(), model.parameters()):
                    pe.lerp_(pm, 1 - decay)
            step += 1
            losses.append(float(loss.detach()))
            if "attributes" in parts:
                attr_losses.append(parts["attributes"])
            bar.update(task, completed=step, info=f"loss {float(np.mean(losses[-20:])):.4f}")
            stop = (deadline is not None and time.time() > deadline) or stop_requested.flag
            if dist.is_initialized():  # every rank stops at the same step
                flag = torch.tensor([1.0 if stop else 0.0], device=device)
                dist.all_reduce(flag)
                stop = bool(flag.item() > 0)
            if rank == 0 and (step % tcfg.checkpoint_every == 0 or step == tcfg.steps or stop):
                state = {
                    "model": model.state_dict(),
                    "ema": ema.state_dict(),
                    "optimizer": opt.state_dict(),
                    "step": step,
                    "config": cfg.to_dict(),
                    "feature_mean": mean,
                    "feature_std": std,
                    "encoder": data.info["encoder"],
                }
                save_checkpoint(ckpt_path, state)
                with open(log_path, "a") as f:
                    row = {"step": step, "loss": float(np.mean(losses[-tcfg.checkpoint_every:])), "time": time.time()}
                    if attr_losses:
                        row["attributes"] = float(np.mean(attr_losses[-tcfg.checkpoint_every:]))
                    f.write(json.dumps(row) + "\n")
            if stop:
                if rank == 0:
                    why = "stop requested (checkpoint saved)" if stop_requested.flag else "time budget reached"
                    print(f"{why} at step {step}; rerun the same command to resume")
                break
    if tcfg.save_rank_weights:
        save_checkpoint(out / f"rank{rank}.pt", model.state_dict())
    if dist.is_initialized():
        dist.barrier()
    return out


class _StopRequest:
    """SIGINT / SIGTERM ask the loop to checkpoint and stop at the end of the current step."""

    def __init__(self):
        self.flag = False
        self._old: dict = {}

    def _handle(self, signum, frame) -> None:
        if self.flag:  # a second Ctrl-C stops at once
            raise KeyboardInterrupt
        self.flag = True

    def __enter__(self):
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        import signal

        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def _legacy_loss(net, data, table, tcfg, dcfg, rng, gen, mean, std) -> torch.Tensor:
    """One batch's flow-matching loss for the first models (slot-less, or two phrase slots)."""
    from .data import to_reference_density
    from .flow import flow_matching_loss

    extra = None
    if table is not None:
        from .conditioning import assemble

        feats, rows, slots = data.sample(tcfg.batch_size, dcfg.num_gaussians, rng, with_slots=True)
        c = assemble([data.captions[r] for r in rows.tolist()], table, data.pooled[rows].float())
        tokens, mask, pooled = c.tokens, c.mask, c.pooled
        extra = {"slots": slots, **c.extra()}
    else:
        feats, rows = data.sample(tcfg.batch_size, dcfg.num_gaussians, rng)
        tokens, mask, pooled = data.tokens[rows], data.mask[rows], data.pooled[rows]
        t_len = int(mask.sum(1).max())
        tokens, mask = tokens[:, :t_len], mask[:, :t_len]
    x1 = (to_reference_density(feats, dcfg.num_gaussians) - mean) / std
    return flow_matching_loss(
        net, x1, tokens, mask, pooled, generator=gen, cond_drop=tcfg.cond_drop, ot_pairing=tcfg.ot_pairing, extra=extra,
    )


def _checkpoint_weights(path: Path) -> dict:
    """A generator checkpoint's weights (its ``weights``, else its ``ema``), for a warm start."""
    if not path.is_file():
        raise InputError(path, "warm-start checkpoint not found")
    state = torch.load(path, map_location="cpu", weights_only=True)
    weights = state.get("weights", state.get("ema")) if isinstance(state, dict) else None
    if weights is None:
        raise InputError(path, "not a recon3d generator checkpoint (no 'weights' or 'ema')")
    return weights


def _warm_start_matching(model, ema, path: Path) -> int:
    """Copy every tensor of a checkpoint whose name and shape this model shares (a slot-query model
    warm-started from a first-round model keeps its set transformer blocks); returns how many."""
    weights = _checkpoint_weights(path)
    own = model.state_dict()
    keep = {k: v.float() for k, v in weights.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(keep, strict=False)
    ema.load_state_dict(keep, strict=False)
    return len(keep)


def _warm_start(model: SetFlowTransformer, ema: SetFlowTransformer, path: Path) -> None:
    """Copy a checkpoint's weights into ``model`` and ``ema``; only zero-initialised slot parameters may be new."""
    weights = _checkpoint_weights(path)
    own = model.state_dict()
    bad = [k for k, v in weights.items() if k not in own or own[k].shape != v.shape]
    if bad:
        raise InputError(path, f"weights do not fit this model: {bad[:5]}")
    new = sorted(set(own) - set(weights))
    if any(not k.startswith(("slot_", "tag_", "relation_in")) for k in new):
        raise InputError(path, f"checkpoint lacks parameters of this model: {new[:5]}")
    weights = {k: v.float() for k, v in weights.items()}
    model.load_state_dict(weights, strict=False)
    ema.load_state_dict(weights, strict=False)


def export_weights(
    run_dir: str | Path, out_path: str | Path, extra: dict | None = None, sample: dict | None = None
) -> Path:
    """Write the EMA weights (float16) and their metadata JSON: the shipped checkpoint format.

    ``sample`` replaces the run's default sampling settings (the config's ``sample`` section).
    """
    run_dir, out_path = Path(run_dir), Path(out_path)
    state = torch.load(run_dir / "last.pt", map_location="cpu", weights_only=True)
    cfg = copy.deepcopy(state["config"])
    if sample:
        cfg["sample"] = {**cfg["sample"], **sample}
    weights = {k: v.half() if v.is_floating_point() else v for k, v in state["ema"].items()}
    payload = {
        "weights": weights,
        "model_config": ModelConfig(**cfg["model"]).to_dict(),
        "feature_mean": state["feature_mean"],
        "feature_std": state["feature_std"],
        "encoder": state["encoder"],
        "sample": cfg["sample"],
        "train_num_gaussians": cfg["data"]["num_gaussians"],
        "step": state["step"],
    }
    save_checkpoint(out_path, payload)
    from .data import COLOURS, RELATIONS, SHAPES

    meshes = []
    info_path = Path(cfg["data"]["dir"]) / "info.json"
    if info_path.is_file():
        meshes = [m["name"] for m in json.loads(info_path.read_text()).get("meshes", [])]
    meta = {
        "file": out_path.name,
        "name": cfg["name"],
        "step": state["step"],
        "model_config": payload["model_config"],
        "encoder": state["encoder"],
        "sample": cfg["sample"],
        "train": cfg["train"],
        "data": cfg["data"],
        "bytes": out_path.stat().st_size,
        "known_concepts": [*SHAPES, *meshes, *COLOURS, "small", "large", *RELATIONS],
    } | (extra or {})
    if payload["model_config"].get("object_queries"):
        from . import grammar

        words = [w for ws in grammar.SHAPE_WORDS.values() for w in ws]
        phrasings = [p for ps in grammar.RELATION_WORDS.values() for p in ps]
        sizes = [w for w in grammar.SIZE_SCALE if w]
        meta["known_concepts"] = [*words, *grammar.COLOUR_NAMES, *sizes, *phrasings]
        meta["capabilities"] = {
            "max_objects": int(payload["model_config"]["object_queries"]), "max_count": grammar.MAX_OBJECTS,
            "relations": list(grammar.RELATIONS), "max_relations": 3, "image": bool(payload["model_config"].get("image")),
            "concepts": meta["known_concepts"], "gaussians": "per object",
        }
    atomic_write_text(out_path.with_suffix(".json"), json.dumps(meta, indent=1))
    return out_path
