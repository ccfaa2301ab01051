"""Images in, ranked catalogue items out: the one code path that
`edge-runtime match`, the camera pipeline and the update self-test share.

``Matcher.open`` refuses a bundle before anything can crash or mislead:

1. ``verify_bundle``: every listed file present with its size and sha256, the
   Annoy file size consistent with dim x n_vectors, embeddings.npy header,
   items.json counts, index.encoder_sha256 == encoder sha256;
2. the encoder's input/output shapes (ONNX Runtime session metadata) against
   the manifest;
3. only then Annoy ``load(prefault=False)`` (memory-mapped), followed by a
   comparison of stored Annoy vectors with embeddings.npy;
4. a probe image encoded now must reproduce its stored embedding: an index
   built by another encoder is refused even when every hash was recomputed.

``overlay_dir`` adds a kiosk's local enrolment (edge_runtime/overlay.py):
its photos, embedded by this bundle's encoder, are searched exactly beside
the bundle's index; the self-test ignores them.

A remote update does step 1 (and the parsing of items.json, and the choice
of search mode) in a separate process, off the frame path
(``edge_runtime.update.verify``), and hands the result over as
``VerifiedItems``; ``Matcher.open(..., verified=...)`` then skips them,
after checking the manifest is byte for byte the one that was verified.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge_runtime.encoders.base import EncoderBackend
from edge_runtime.overlay import OverlayVectors, overlay_vectors
from edge_runtime.search import VectorIndex, check_mode
from models.bundle import MANIFEST, Manifest, load_probes, parse_manifest, verify_bundle_items
from models.errors import BundleError, ImageError
from models.images import read_image
from models.preprocess import preprocess_batch

__all__ = ["Match", "Matcher", "VerifiedItems", "ENCODER_CHECK_MIN_COSINE"]

log = logging.getLogger(__name__)

# fp16 TensorRT engines reproduce fp32 ONNX embeddings to ~0.9999, INT8 ones
# to ~0.99; another encoder's embedding of the same photo is unrelated (~0).
ENCODER_CHECK_MIN_COSINE = 0.95


@dataclass(frozen=True)
class Match:
    item_id: str
    name: str
    score: float  # cosine similarity, -1..1
    rank: int  # 1 = best


@dataclass(frozen=True)
class VerifiedItems:
    """What a verifier (another process) found in a bundle it checked in
    full: the manifest's sha256, the items, each vector's item, and the
    search mode it chose by measurement (with the measurements)."""

    manifest_sha256: str
    items: list[tuple[str, str]]
    vec_item: np.ndarray
    search_mode: str
    search_report: dict = field(default_factory=dict)


def _read_verified(root: Path, verified: VerifiedItems) -> Manifest:
    data = (root / MANIFEST).read_bytes()
    if hashlib.sha256(data).hexdigest() != verified.manifest_sha256:
        raise BundleError(f"{root / MANIFEST}: changed since it was verified")
    return parse_manifest(data, where=str(root / MANIFEST))


class Matcher:
    """A verified, warmed bundle ready to match images. Use ``Matcher.open``.

    The matcher owns its encoder: ``close`` closes both (an encoder passed to
    ``open`` is closed too, but not when ``open`` itself fails)."""

    def __init__(self, bundle_dir: Path, manifest: Manifest, encoder: EncoderBackend,
                 index: VectorIndex, items: list[tuple[str, str]], threshold: float,
                 search_mode: str) -> None:
        self.bundle_dir = bundle_dir
        self.manifest = manifest
        self.encoder = encoder
        self.index = index
        self.items = items
        self.n_base_items = len(items)   # the bundle's own; overlay items come after
        self.threshold = threshold
        self.search_mode = search_mode
        self.search_report: dict = {}  # auto mode's measurements, when it measured
        self.overlay: OverlayVectors | None = None
        self._overlay_groups: list[tuple[int, np.ndarray]] = []   # (item, its overlay rows)

    @classmethod
    def open(cls, bundle_dir: str | Path, encoder: EncoderBackend | None = None,
             threshold: float | None = None, search_mode: str | None = None,
             verified: VerifiedItems | None = None, overlay_dir: Path | None = None) -> Matcher:
        root = Path(bundle_dir)
        if verified is None:
            m, items_file = verify_bundle_items(root)
            items = [(i.item_id, i.name) for i in items_file.items]
            vec_item = np.fromiter((v.item for v in items_file.vectors), dtype=np.int64,
                                   count=len(items_file.vectors))
        else:
            m, items, vec_item = _read_verified(root, verified), verified.items, verified.vec_item
        own_encoder = encoder is None
        if encoder is None:
            from edge_runtime.encoders.onnx_backend import OnnxEncoder

            encoder = OnnxEncoder(root / m.encoder.file, m.input, m.embedding_size)
        elif encoder.spec != m.input or encoder.embedding_size != m.embedding_size:
            raise BundleError(f"{root / m.encoder.file}: the given {encoder.name} encoder takes "
                              f"{encoder.spec.size}px -> {encoder.embedding_size}-d, the manifest "
                              f"says {m.input.size}px -> {m.embedding_size}-d")
        index = None
        try:
            index = VectorIndex(root / m.index.file, root / "embeddings.npy", m.index.dim, vec_item,
                                len(items), m.index.n_trees, m.index.search_k)
            index.check_consistency()
            mode = check_mode(search_mode or m.search.mode)
            matcher = cls(root, m, encoder, index, list(items),
                          m.search.threshold if threshold is None else float(threshold), mode)
            matcher._check_encoder()
            if overlay_dir is not None:
                matcher.attach_overlay(overlay_vectors(overlay_dir, m.encoder.sha256,
                                                       matcher.encode))
            encoder.warmup()
            index.warm()
            if mode == "auto" and verified is not None:
                matcher.search_mode, matcher.search_report = (verified.search_mode,
                                                              verified.search_report)
            elif mode == "auto":
                matcher._choose_mode()
        except BaseException:
            if index is not None:
                index.close()
            if own_encoder:
                encoder.close()
            raise
        log.info("bundle %s v%d: %d items, %d vectors, search %s, encoder %s", root,
                 m.bundle_version, m.item_count, m.index.n_vectors, matcher.search_mode, encoder.name)
        return matcher

    def attach_overlay(self, ov: OverlayVectors) -> None:
        """Search ``ov``'s vectors beside the index from now on: rows of an
        item the bundle has count for it, others are extra items."""
        if len(ov.item_ids) and ov.emb.shape[1] != self.manifest.embedding_size:
            raise BundleError(f"overlay embeddings are {ov.emb.shape[1]}-d, the bundle's "
                              f"{self.manifest.embedding_size}-d")
        index = {iid: k for k, (iid, _) in enumerate(self.items)}
        rows: dict[int, list[int]] = {}
        for r, iid in enumerate(ov.item_ids):
            if iid not in index:
                index[iid] = len(self.items)
                self.items.append((iid, ov.names.get(iid, iid)))
            rows.setdefault(index[iid], []).append(r)
        self.overlay = ov
        self._overlay_groups = [(k, np.asarray(v)) for k, v in rows.items()]
        log.info("%s: local overlay of %d photo(s), %d item(s)", self.bundle_dir,
                 len(ov.item_ids), len(rows))

    def _choose_mode(self) -> None:
        """``auto``: exact search below the bundle's ``exact_below`` vectors
        (there it is within a fraction of a millisecond of the best Annoy
        set-up and has perfect recall, bench/index.py); above, measure exact vs
        Annoy on this device and these vectors and take the faster one that
        keeps recall@10 >= 0.95."""
        if self.index.n_vectors < self.manifest.search.exact_below:
            self.search_mode = "exact"
            return
        self.search_mode, self.search_report = self.index.calibrate()
        log.info("%s: search mode %s chosen by measurement: %s", self.bundle_dir, self.search_mode,
                 ", ".join(f"{k} {v['median_ms']:.3f} ms recall {v['recall']:.3f}"
                           for k, v in self.search_report.items()))

    def _check_encoder(self) -> None:
        """Encode one probe whose bytes are a stored vector's source and
        compare: catches embeddings/index produced by a different encoder."""
        for p in load_probes(self.bundle_dir).probes:
            if p.vector is None or p.vector >= self.index.n_vectors:
                continue
            path = self.bundle_dir / p.file
            try:
                emb = self.encode([read_image(path)])[0]
            except ImageError as exc:
                raise BundleError(f"{path}: probe image unreadable ({exc})") from None
            cos = float(np.dot(emb, self.index.emb[p.vector]))
            if cos < ENCODER_CHECK_MIN_COSINE:
                raise BundleError(
                    f"{self.bundle_dir / self.manifest.index.file}: built by another encoder "
                    f"({self.encoder.name} embeds {p.file} at cosine {cos:.4f} to its stored "
                    f"vector {p.vector}, need >= {ENCODER_CHECK_MIN_COSINE})")
            return
        log.warning("%s: no probe with a stored vector; encoder/index identity not re-checked",
                    self.bundle_dir)

    # ------------------------------------------------------------ matching

    def encode(self, images_bgr: list[np.ndarray]) -> np.ndarray:
        """BGR uint8 images -> (N, D) float32 L2-normalised embeddings."""
        if not images_bgr:
            return np.zeros((0, self.manifest.embedding_size), dtype=np.float32)
        return self.encoder.encode(preprocess_batch(list(images_bgr), self.encoder.spec))

    def search(self, emb: np.ndarray, top_k: int = 5, *, overlay: bool = True
               ) -> list[list[Match]]:
        """Items ranked by their best vector (the overlay's included unless
        ``overlay`` is False); always ``top_k`` (or all items if fewer); the
        caller applies ``self.threshold``."""
        emb = np.atleast_2d(np.asarray(emb, dtype=np.float32))
        if emb.shape[1] != self.manifest.embedding_size:
            raise ValueError(f"expected {self.manifest.embedding_size}-d embeddings, got {emb.shape}")
        rows = self.index.search_items(emb, top_k, self.search_mode)  # type: ignore[arg-type]
        if overlay and self._overlay_groups:
            rows = self._merge_overlay(emb, rows, top_k)
        return [[Match(self.items[i][0], self.items[i][1], round(float(s), 6), r)
                 for r, (i, s) in enumerate(row, start=1)] for row in rows]

    def _merge_overlay(self, emb: np.ndarray, rows: list, top_k: int) -> list:
        """An item's score is its best vector in the index or the overlay; the
        index's top_k plus every overlay item hold the true top_k."""
        scores = emb @ self.overlay.emb.T
        out = []
        for b, row in enumerate(rows):
            best = {int(i): float(s) for i, s in row}
            for item, r in self._overlay_groups:
                s = float(scores[b, r].max())
                if s > best.get(item, -2.0):
                    best[item] = s
            out.append(sorted(best.items(), key=lambda kv: -kv[1])[:top_k])
        return out

    def match_images(self, images: list[np.ndarray], top_k: int = 5, *, overlay: bool = True
                     ) -> list[list[Match]]:
        return self.search(self.encode(images), top_k, overlay=overlay) if images else []

    def self_test(self) -> list[str]:
        """Each probe image must retrieve its expected item at rank 1 and at or
        above the threshold. Returns the failures; empty means pass."""
        failures = []
        for p in load_probes(self.bundle_dir).probes:
            path = self.bundle_dir / p.file
            try:
                top = self.match_images([read_image(path)], top_k=1, overlay=False)[0]
            except ImageError as exc:
                failures.append(f"{p.file}: unreadable ({exc})")
                continue
            if not top or top[0].item_id != p.item_id:
                got = f"{top[0].item_id} ({top[0].score:.3f})" if top else "nothing"
                failures.append(f"{p.file}: expected {p.item_id}, got {got}")
            elif top[0].score < self.threshold:
                failures.append(f"{p.file}: {p.item_id} at {top[0].score:.3f}, below the "
                                f"threshold {self.threshold}")
        return failures

    def close(self) -> None:
        self.index.close()
        self.encoder.close()

    def __enter__(self) -> Matcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"Matcher({self.bundle_dir}, v{self.manifest.bundle_version}, {self.search_mode}, "
                f"{self.encoder.name})")

