"""Nearest-neighbour search over a bundle's vectors, at vector and item level.

Three ways to answer a query, all over L2-normalised float32 embeddings:

- ``exact``: one BLAS matrix product against the memory-mapped
  ``embeddings.npy``; exact cosine, and the fastest choice at store-sized
  catalogues (see bench/index.py: below roughly 10^5 vectors a matmul beats
  Annoy at the search_k needed for recall@10 >= 0.95).
- ``annoy``: the memory-mapped Annoy angular index alone; cosine from the
  angular distance d as cos = 1 - d^2/2.
- ``annoy_rerank``: Annoy candidates re-scored by exact dot products with the
  stored embeddings (exact scores, sublinear candidate generation).

Annoy files have no header, so nothing here opens one before the caller has
checked its size against the manifest (``models.bundle.verify_bundle``), and
``check_consistency`` compares stored Annoy vectors against the embeddings
before any tree is walked: a wrong-dimension or foreign index is refused
instead of followed into garbage pointers.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Literal

import numpy as np

from models.errors import BundleError

__all__ = ["SearchMode", "VectorIndex", "annoy_cosine", "exact_topk", "check_mode",
           "RECALL_TARGET"]

SearchMode = Literal["exact", "annoy", "annoy_rerank"]
MODES = ("auto", "exact", "annoy", "annoy_rerank")
RECALL_TARGET = 0.95  # recall@10 against exact search that `auto` requires of Annoy
# Annoy must be clearly faster to be chosen over exact (perfect recall, no tuning).
EXACT_PREFERENCE = 0.8


def annoy_cosine(dist: np.ndarray) -> np.ndarray:
    """Annoy's angular distance is sqrt(2 - 2 cos) for unit vectors."""
    return 1.0 - np.square(np.asarray(dist, dtype=np.float32)) / 2.0


def exact_topk(emb: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k vectors by cosine for each query row: (indices (B,k), scores (B,k)), best first."""
    scores = queries @ emb.T
    k = min(k, scores.shape[1])
    part = np.argpartition(scores, scores.shape[1] - k, axis=1)[:, -k:]
    top = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-top, axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1), np.take_along_axis(top, order, axis=1)


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise BundleError(f"unknown search mode {mode!r} (expected one of {', '.join(MODES)})")
    return mode


class VectorIndex:
    """The Annoy index and embeddings of one bundle, both memory-mapped.

    ``vec_item[i]`` is the item index of vector i; item-level answers rank
    items by their best vector.
    """

    def __init__(self, annoy_path: Path, emb_path: Path, dim: int, vec_item: np.ndarray,
                 n_items: int, n_trees: int, search_k: int = -1) -> None:
        from annoy import AnnoyIndex

        self.annoy_path, self.emb_path = Path(annoy_path), Path(emb_path)
        self.dim, self.n_items, self.n_trees, self.search_k = dim, n_items, n_trees, search_k
        try:
            # A plain ndarray view of the memory map (no copy): products with an
            # np.memmap operand take ~5x longer in NumPy's subclass handling.
            self.emb = np.asarray(np.load(self.emb_path, mmap_mode="r", allow_pickle=False))
        except (OSError, ValueError) as exc:
            raise BundleError(f"{self.emb_path}: cannot memory-map ({exc})") from None
        self.vec_item = np.ascontiguousarray(vec_item, dtype=np.int64)
        if self.emb.shape != (len(self.vec_item), dim):
            raise BundleError(f"{self.emb_path}: shape {self.emb.shape}, expected "
                              f"({len(self.vec_item)}, {dim})")
        self._sorted = bool(np.all(np.diff(self.vec_item) >= 0))
        counts = np.bincount(self.vec_item, minlength=n_items)
        self._has = np.flatnonzero(counts)
        self._starts = np.concatenate([[0], np.cumsum(counts)[:-1]])[self._has]
        self.annoy = AnnoyIndex(dim, "angular")
        try:
            self.annoy.load(str(self.annoy_path), prefault=False)  # memory-mapped, pages on demand
        except OSError as exc:
            raise BundleError(f"{self.annoy_path}: Annoy cannot load it ({exc})") from None

    @property
    def n_vectors(self) -> int:
        return len(self.vec_item)

    # ------------------------------------------------------------ checks

    def check_consistency(self, samples: int = 16) -> None:
        """Refuse an index that does not hold exactly the stored embeddings
        (other dimension, other encoder, other release)."""
        n = self.annoy.get_n_items()
        if n != self.n_vectors:
            raise BundleError(f"{self.annoy_path}: holds {n} vectors, {self.emb_path.name} has "
                              f"{self.n_vectors} (index from another build or dimension)")
        picks = np.unique(np.linspace(0, n - 1, num=min(samples, n)).astype(np.int64))
        for i in picks:
            v = np.asarray(self.annoy.get_item_vector(int(i)), dtype=np.float32)
            if v.shape != (self.dim,) or not np.allclose(v, self.emb[i], atol=1e-5):
                raise BundleError(f"{self.annoy_path}: vector {i} differs from {self.emb_path.name} "
                                  "(index of another dimension or built from other embeddings)")

    def warm(self, queries: int = 4) -> None:
        """Pull the files into the page cache and run a few queries, so the
        first frame does not pay for cold pages."""
        for p in (self.annoy_path, self.emb_path):
            try:
                fd = os.open(p, os.O_RDONLY)
                try:
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
                finally:
                    os.close(fd)
            except (AttributeError, OSError):
                pass  # not on this platform: the queries below still warm it
        q = np.asarray(self.emb[: max(1, min(queries, self.n_vectors))], dtype=np.float32)
        exact_topk(self.emb, q, 1)
        for row in q:
            self.annoy.get_nns_by_vector(row.tolist(), 10, search_k=self._search_k(10))

    # ------------------------------------------------------------ vectors

    def _search_k(self, n: int) -> int:
        return max(self.search_k, n) if self.search_k > 0 else -1

    def annoy_vectors(self, query: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        ids, dist = self.annoy.get_nns_by_vector(np.asarray(query, dtype=np.float32).tolist(), n,
                                                 search_k=self._search_k(n), include_distances=True)
        return np.asarray(ids, dtype=np.int64), annoy_cosine(dist)

    def candidates(self, top_k: int) -> int:
        """How many vectors an item-level Annoy query asks for first."""
        return min(self.n_vectors, max(10 * top_k, 50))

    def _annoy_top(self, q: np.ndarray, k: int, rerank: bool) -> np.ndarray:
        ids, _ = self.annoy_vectors(q, self.candidates(5))
        if rerank and len(ids):
            ids = np.sort(ids)
            ids = ids[np.argsort(-(self.emb[ids] @ q), kind="stable")]
        return ids[:k]

    def calibrate(self, n_queries: int = 32, k: int = 10) -> tuple[SearchMode, dict]:
        """Measure, on this machine and these vectors, exact search against
        Annoy and Annoy re-ranked as the item search runs them, at the
        bundle's search_k and at 4x and 16x more: stored vectors as
        leave-one-out queries, recall@k against exact, median latency. Keeps
        the fastest set-up whose recall@k >= RECALL_TARGET and that takes
        under EXACT_PREFERENCE x exact's time (setting ``search_k`` to it),
        else exact. Returns (mode, measurements)."""
        rng = np.random.default_rng(0)
        n_queries = min(n_queries if self.n_vectors < 200_000 else 8, self.n_vectors)
        picks = rng.choice(self.n_vectors, size=n_queries, replace=False)
        queries = np.asarray(self.emb[picks], dtype=np.float32)

        def timed(fn) -> tuple[list[np.ndarray], float]:
            out, times = [], []
            for q in queries:
                t = time.perf_counter()
                out.append(fn(q))
                times.append(time.perf_counter() - t)
            return out, float(np.median(times) * 1e3)

        def drop_self(rows: list[np.ndarray]) -> list[set]:
            return [set([j for j in r.tolist() if j != i][:k])
                    for r, i in zip(rows, picks, strict=True)]

        exact, t_exact = timed(lambda q: exact_topk(self.emb, q[None], k + 1)[0][0])
        truth = drop_self(exact)
        report: dict = {"exact": {"median_ms": t_exact, "recall": 1.0}}
        best: tuple[str, float, int] = ("exact", t_exact, self.search_k)
        base = self.search_k if self.search_k > 0 else self.n_trees * self.candidates(5)
        original = self.search_k
        for mode, rerank in (("annoy", False), ("annoy_rerank", True)):
            for sk in (base, 4 * base, 16 * base):
                self.search_k = sk
                got, t = timed(lambda q, r=rerank: self._annoy_top(q, k + 1, r))
                recall = float(np.mean([len(g & tr) / max(1, len(tr))
                                        for g, tr in zip(drop_self(got), truth, strict=True)]))
                report[mode] = {"median_ms": t, "recall": recall, "search_k": sk}
                if recall >= RECALL_TARGET:
                    if t < best[1] and t < EXACT_PREFERENCE * t_exact:
                        best = (mode, t, sk)
                    break  # more search_k only costs time
        self.search_k = best[2] if best[0] != "exact" else original
        return best[0], report  # type: ignore[return-value]

    # ------------------------------------------------------------ items

    def item_scores_exact(self, queries: np.ndarray) -> np.ndarray:
        """(B, n_items) best cosine per item (-inf for items without vectors)."""
        scores = np.asarray(queries, dtype=np.float32) @ self.emb.T
        out = np.full((scores.shape[0], self.n_items), -np.inf, dtype=np.float32)
        if self._sorted:
            out[:, self._has] = np.maximum.reduceat(scores, self._starts, axis=1)
        else:
            for b in range(scores.shape[0]):
                np.maximum.at(out[b], self.vec_item, scores[b])
        return out

    def _items_from_candidates(self, ids: np.ndarray, cos: np.ndarray, top_k: int
                               ) -> list[tuple[int, float]]:
        best: dict[int, float] = {}
        for i, c in zip(self.vec_item[ids].tolist(), cos.tolist(), strict=True):
            if c > best.get(i, -np.inf):
                best[i] = c
        return sorted(best.items(), key=lambda t: -t[1])[:top_k]

    def search_items(self, queries: np.ndarray, top_k: int, mode: SearchMode
                     ) -> list[list[tuple[int, float]]]:
        """Per query, up to ``top_k`` (item index, cosine) pairs, best first."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        top_k = max(1, min(top_k, len(self._has)))
        if mode == "exact":
            scores = self.item_scores_exact(queries)
            part = np.argpartition(-scores, top_k - 1, axis=1)[:, :top_k]
            out = []
            for b in range(len(queries)):
                row = sorted(((int(i), float(scores[b, i])) for i in part[b]), key=lambda t: -t[1])
                out.append(row)
            return out
        results = []
        for q in queries:
            n = min(self.n_vectors, max(10 * top_k, 50))
            while True:
                ids, cos = self.annoy_vectors(q, n)
                if mode == "annoy_rerank" and len(ids):
                    ids = np.sort(ids)  # sorted rows read the memory map in order
                    cos = np.asarray(self.emb[ids] @ q, dtype=np.float32)
                ranked = self._items_from_candidates(ids, cos, top_k)
                if len(ranked) >= top_k or n >= self.n_vectors:
                    break
                n = min(self.n_vectors, n * 4)  # too few distinct items among the candidates
            results.append(ranked)
        return results

    def close(self) -> None:
        self.annoy.unload()
        self.emb = None  # type: ignore[assignment]  # drops the memory map
