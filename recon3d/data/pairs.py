"""Which image pairs structure-from-motion matches: neighbours in time for video, look-alikes for the rest.

Exhaustive matching costs n(n-1)/2 pairs: 11k for 150 photos, 125k for 500. Two cheaper sources of pairs:

- **Sequential** (video frames, in order): each frame with its next ``overlap`` frames.
- **Retrieval** by a global image descriptor we compute ourselves (no downloaded vocabulary tree exists
  here): VLAD (Jégou et al., "Aggregating local descriptors into a compact image representation", 2010)
  over the SIFT descriptors pycolmap has already extracted. A small codebook is learnt by k-means on a
  sample of this capture's own descriptors; each image sums the residuals of its descriptors to their
  nearest word, normalises each word's block (intra-normalisation), takes the signed square root and
  normalises the whole. Two views of the same surfaces share words and residual directions, so their
  cosine similarity is high; it costs seconds for hundreds of images, against minutes of matching.

Video gets loop-closure pairs from retrieval: a frame far away in time that looks at least as alike as the
frame ``overlap`` steps away (a pair sequential matching already trusts), and the first and last frames
(an orbit returns to its start). An unordered set gets each image's ``RETRIEVAL_NEIGHBOURS`` most similar
images plus its neighbours in name order (cameras number photos in the order they were taken).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

VLAD_WORDS = 64  # codebook size: 64 × 128 = 8192-D descriptors (enough to separate hundreds of views)
VLAD_SAMPLE = 40_000  # descriptors the codebook is learnt on
VLAD_ITERATIONS = 12  # k-means (Lloyd) iterations; the codebook only needs to partition the space sensibly
SEQUENTIAL_OVERLAP = 8  # video: next frames each frame is matched with
LOOP_NEIGHBOURS = 2  # video: loop-closure pairs per frame (its most similar frames far away in time)
LOOP_MIN_GAP = 30  # video: frames at least this far apart in order are loop-closure candidates
LOOP_OUTLIER = 4.0  # video: a loop candidate's similarity lies this many robust deviations above the far frames
LOOP_ENDS = 3  # video: the first and last frames are matched with each other (orbits return to their start)
RETRIEVAL_NEIGHBOURS = 15  # unordered sets: each image's most similar images
NAME_NEIGHBOURS = 3  # unordered sets: each image's next images in name order


@contextlib.contextmanager
def single_thread_blas():
    """Run numpy's BLAS on one thread: on a busy machine OpenBLAS's spinning threads cost 10× the work."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # not installed: numpy's default threads (slower only on a loaded machine)
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield


def read_descriptors(database: Path, names: Sequence[str]) -> list[np.ndarray]:
    """SIFT descriptors of each named image in a COLMAP database, as stored (uint8, one row per feature).

    Kept as uint8 (a quarter of float32: 500 video frames of 4096 features are 0.26 GB, not 1 GB); the
    VLAD code turns one image's rows at a time into unit float32 vectors (``unit_rows``).
    """
    import pycolmap

    db = pycolmap.Database.open(str(database))
    try:
        ids = {im.name: im.image_id for im in db.read_all_images()}
        out = []
        for name in names:
            if name not in ids or not db.exists_descriptors(ids[name]):
                out.append(np.zeros((0, 128), np.uint8))
                continue
            out.append(np.array(db.read_descriptors(ids[name]).data, copy=True))
    finally:
        db.close()
    return out


def unit_rows(d: np.ndarray) -> np.ndarray:
    """Descriptors as float32 rows of unit length (SIFT's uint8 or already-float rows)."""
    d = np.asarray(d, dtype=np.float32)
    return d / np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-6)


def _nearest(x: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Index of the nearest centre of each row of ``x`` (squared Euclidean distance)."""
    d = (centres * centres).sum(1)[None, :] - 2.0 * (x @ centres.T)
    return np.argmin(d, axis=1)


def _word_sums(x: np.ndarray, assign: np.ndarray, words: int) -> tuple[np.ndarray, np.ndarray]:
    """Per word: how many rows of ``x`` were assigned to it and their sum (a one-hot product: BLAS-fast)."""
    onehot = np.zeros((len(x), words), np.float32)
    onehot[np.arange(len(x)), assign] = 1.0
    return onehot.sum(0), onehot.T @ x


def train_codebook(descriptors: Sequence[np.ndarray], words: int = VLAD_WORDS, sample: int = VLAD_SAMPLE,
                   iterations: int = VLAD_ITERATIONS, seed: int = 0) -> np.ndarray:  # fmt: skip
    """k-means centres (``words`` × 128) learnt on a sample of the capture's own descriptors."""
    rng = np.random.default_rng(seed)
    sizes = np.array([len(d) for d in descriptors])
    if sizes.sum() == 0:
        return np.zeros((0, 128), np.float32)
    # the sample drawn from the concatenation of all rows, without building it (it can be gigabytes)
    ends = np.cumsum(sizes)
    rows = rng.choice(int(ends[-1]), sample, replace=False) if ends[-1] > sample else np.arange(ends[-1])
    which = np.searchsorted(ends, rows, side="right")
    pool = np.empty((len(rows), 128), np.float32)
    for i in np.unique(which):
        at = which == i
        pool[at] = unit_rows(descriptors[i][rows[at] - (ends[i] - sizes[i])])
    words = min(words, len(pool))
    centres = pool[rng.choice(len(pool), words, replace=False)].copy()
    for _ in range(iterations):
        counts, sums = _word_sums(pool, _nearest(pool, centres), words)
        empty = counts == 0
        centres[~empty] = sums[~empty] / counts[~empty, None]
        if empty.any():  # an empty word restarts on a random descriptor instead of dying
            centres[empty] = pool[rng.choice(len(pool), int(empty.sum()), replace=False)]
    return centres


def vlad(descriptors: np.ndarray, codebook: np.ndarray) -> np.ndarray:
    """The VLAD vector of one image: residuals summed per word, intra-normalised, signed root, unit length."""
    words, dim = codebook.shape
    out = np.zeros((words, dim), np.float32)
    if len(descriptors) and words:
        descriptors = unit_rows(descriptors)
        counts, sums = _word_sums(descriptors, _nearest(descriptors, codebook), words)
        out = sums - counts[:, None] * codebook  # the sum of (descriptor - its word) per word
        out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
    v = out.reshape(-1)
    v = np.sign(v) * np.sqrt(np.abs(v))
    return v / max(float(np.linalg.norm(v)), 1e-12)


def global_descriptors(descriptors: Sequence[np.ndarray], words: int = VLAD_WORDS, seed: int = 0) -> np.ndarray:
    """One unit-length VLAD row per image (zeros for an image without features)."""
    codebook = train_codebook(descriptors, words=words, seed=seed)
    return np.stack([vlad(d, codebook) for d in descriptors]) if len(descriptors) else np.zeros((0, 0))


def sequential_pairs(n: int, overlap: int) -> set[tuple[int, int]]:
    """Each of ``n`` ordered items with its next ``overlap`` items, as (i, j) with i < j."""
    return {(i, j) for i in range(n) for j in range(i + 1, min(n, i + 1 + overlap))}


def retrieval_pairs(desc: np.ndarray, neighbours: int) -> set[tuple[int, int]]:
    """Each image with its ``neighbours`` most similar others (cosine similarity of global descriptors)."""
    n = len(desc)
    if n < 2 or neighbours <= 0:
        return set()
    sim = desc @ desc.T
    np.fill_diagonal(sim, -np.inf)
    k = min(neighbours, n - 1)
    top = np.argpartition(-sim, k - 1, axis=1)[:, :k]
    return {(min(i, int(j)), max(i, int(j))) for i in range(n) for j in top[i]}


def loop_pairs(desc: np.ndarray, overlap: int = SEQUENTIAL_OVERLAP, per_frame: int = LOOP_NEIGHBOURS,
               min_gap: int = LOOP_MIN_GAP, ends: int = LOOP_ENDS) -> set[tuple[int, int]]:  # fmt: skip
    """Loop-closure pairs of an ordered sequence: far-apart frames that look alike, and its two ends.

    A frame ``j`` at least ``min_gap`` away from ``i`` is a candidate when it looks at least as alike as
    the frame ``overlap`` steps from ``i`` (a pair sequential matching trusts) and stands out among all the
    frames far from ``i`` (``LOOP_OUTLIER`` robust deviations above their median): thresholds that adapt to
    the capture instead of an absolute similarity.
    """
    n = len(desc)
    pairs: set[tuple[int, int]] = set()
    if n < 2:
        return pairs
    sim = desc @ desc.T
    idx = np.arange(n)
    gap = min(min_gap, max(2, n // 3))
    far = np.abs(idx[:, None] - idx[None, :]) >= gap
    for i in range(n):
        near = [sim[i, j] for j in (i - overlap, i + overlap) if 0 <= j < n]
        others = sim[i, far[i]]
        if not near or len(others) == 0:
            continue
        # ... and stands out among the far frames (a revisit is a handful of them, not the bulk)
        median = float(np.median(others))
        spread = 1.4826 * float(np.median(np.abs(others - median)))
        cand = np.where(far[i] & (sim[i] >= min(near)) & (sim[i] > median + LOOP_OUTLIER * spread))[0]
        for j in cand[np.argsort(-sim[i, cand])][:per_frame]:
            pairs.add((min(i, int(j)), max(i, int(j))))
    ends = min(ends, n // 2)
    pairs |= {(i, j) for i in range(ends) for j in range(n - ends, n) if i < j}
    return pairs


def choose_pairs(names: Sequence[str], desc: np.ndarray | None, *, sequential: bool) -> tuple[list[tuple[str, str]], dict]:  # fmt: skip
    """The pairs to match for ``names`` (ordered frames when ``sequential``) and how many came from where."""
    n = len(names)
    if sequential:
        base = sequential_pairs(n, SEQUENTIAL_OVERLAP)
        extra = loop_pairs(desc) if desc is not None else set()
        counts = {"sequential": len(base), "loop_closure": len(extra - base)}
    else:
        base = sequential_pairs(n, NAME_NEIGHBOURS)
        extra = retrieval_pairs(desc, RETRIEVAL_NEIGHBOURS) if desc is not None else set()
        counts = {"name_order": len(base), "retrieval": len(extra - base)}
    pairs = sorted(base | extra)
    counts["total"] = len(pairs)
    return [(names[i], names[j]) for i, j in pairs], counts


def write_pairs(path: Path, pairs: Sequence[tuple[str, str]]) -> None:
    """A COLMAP pair list (``name1 name2`` per line), as pycolmap's imported pairing reads it."""
    from ..io_utils import atomic_write_text

    atomic_write_text(path, "".join(f"{a} {b}\n" for a, b in pairs))
