"""Training data held in memory: every photo decoded and pre-resized ONCE.

On a 2-core CPU, decoding a 348 px JPEG costs more than a training step on a
64 px crop, so the catalogue is decoded once into a uint8 array of squares a
little larger than the network input (``cache_scale``), and every training
view is cut from that array by one warp (see ``trainer.distort``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from models.catalogue import Catalogue, Entry, iter_images, load_catalogue
from models.errors import CatalogueError
from models.preprocess import PreprocessSpec, to_uint8_rgb
from trainer.distort import DEFAULT_MIN_AREA

__all__ = ["ImageSet", "load_image_set", "split_val", "batches", "CACHE_SCALE", "cache_scale_for"]

log = logging.getLogger(__name__)
CACHE_SCALE = 1.25


@dataclass
class ImageSet:
    """Decoded squares (N, C, C, 3) uint8 RGB with labels (-1 = unlabelled)."""

    images: np.ndarray
    labels: np.ndarray
    entries: list[Entry]
    item_ids: list[str]
    skipped: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, idx: Sequence[int] | np.ndarray) -> ImageSet:
        idx = np.asarray(idx, dtype=np.int64)
        return ImageSet(self.images[idx], self.labels[idx], [self.entries[i] for i in idx],
                        self.item_ids, [])


def cache_scale_for(min_area: float) -> float:
    """Cache side / input side so that the smallest crop is still cut at
    about the input's resolution (zoomed views stay sharp): 1.25 down to the
    default 0.45 crop, larger for deeper zoom, at most 2.5."""
    return float(min(2.5, max(CACHE_SCALE, CACHE_SCALE * (DEFAULT_MIN_AREA / min_area) ** 0.5)))


def cache_spec(spec: PreprocessSpec, scale: float = CACHE_SCALE) -> PreprocessSpec:
    return spec.model_copy(update={"size": int(round(spec.size * scale))})


def _decode(entries: Sequence[Entry], spec: PreprocessSpec) -> tuple[list[np.ndarray], list[Entry], list[str]]:
    imgs: list[np.ndarray] = []
    kept: list[Entry] = []
    readable: set[Path] = set()
    for e, img in iter_images(list(entries)):
        imgs.append(to_uint8_rgb(img, spec))
        kept.append(e)
        readable.add(e.path)
    skipped = [str(e.path) for e in entries if e.path not in readable]
    return imgs, kept, skipped


def load_image_set(catalogue: Catalogue | str | Path, spec: PreprocessSpec, *,
                   unlabelled: Sequence[str | Path] = (), item_ids: Sequence[str] | None = None,
                   scale: float = CACHE_SCALE) -> ImageSet:
    """Decode a catalogue (and unlabelled folders) into memory at ``spec.size * scale``.

    ``item_ids`` fixes the label order (a resumed run must keep its classes);
    by default it is the catalogue's sorted item ids. Corrupt images are logged
    with their path and skipped; nothing readable at all is a CatalogueError.
    """
    cat = catalogue if isinstance(catalogue, Catalogue) else load_catalogue(catalogue)
    entries = list(cat.entries)
    for folder in unlabelled:
        entries += list(load_catalogue(folder, labelled=False).entries)
    ids = list(item_ids) if item_ids is not None else cat.item_ids
    index = {k: i for i, k in enumerate(ids)}
    unknown = sorted({e.item_id for e in entries if e.item_id is not None and e.item_id not in index})
    if unknown:
        raise CatalogueError(f"{cat.root}: items not in this run's classes: {', '.join(unknown[:5])}")
    imgs, kept, skipped = _decode(entries, cache_spec(spec, scale))
    if not imgs:
        raise CatalogueError(f"{cat.root}: no readable images (all {len(entries)} failed to decode)")
    labels = np.array([index[e.item_id] if e.item_id is not None else -1 for e in kept], dtype=np.int64)
    return ImageSet(np.stack(imgs), labels, kept, ids, skipped)


def split_val(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified hold-out: about ``fraction`` of each item's labelled images go
    to validation, but an item keeps at least one training image and items
    with a single image are never held out. Unlabelled images always train."""
    rng = np.random.default_rng([seed, 7])
    val: list[int] = []
    if fraction > 0:
        for c in np.unique(labels[labels >= 0]):
            idx = np.flatnonzero(labels == c)
            n = min(len(idx) - 1, int(round(len(idx) * fraction)))
            if n <= 0 and len(idx) >= 3 and fraction >= 0.05:
                n = 1
            val += rng.choice(idx, size=n, replace=False).tolist() if n > 0 else []
    val_idx = np.array(sorted(val), dtype=np.int64)
    train_idx = np.setdiff1d(np.arange(len(labels)), val_idx)
    return train_idx, val_idx


def batches(n: int, batch_size: int, seed: int, epoch: int, rank: int = 0,
            world: int = 1) -> Iterator[np.ndarray]:
    """Index batches for one epoch: one permutation shared by all ranks, each
    rank takes its own interleaved share; the last partial batch is dropped
    when there is more than one batch (BatchNorm dislikes tiny batches)."""
    perm = np.random.default_rng([seed, epoch, 11]).permutation(n)
    per_step = batch_size * world
    steps = max(1, n // per_step)
    for s in range(steps):
        chunk = perm[s * per_step:(s + 1) * per_step]
        mine = chunk[rank::world]
        if len(mine) == 0:
            mine = perm[rank % n: rank % n + 1]
        yield mine
