"""Building and extending a bundle's index, without torch.

Shared by `trainer index` (a whole catalogue), `trainer enroll` and
`edge-runtime enroll` (a few new photos, no retraining). Images are encoded
by whatever ``EncoderBackend`` the caller passes (ONNX Runtime over the
bundle's own encoder.onnx), with the same preprocessing the device runs.

Nothing is ever rewritten in place: a complete new bundle folder is written
beside the target, fsynced, and swapped in with one atomic directory
exchange (Linux ``renameat2(RENAME_EXCHANGE)``; two renames elsewhere). A
process that memory-maps the old index.ann keeps its inode; a crash leaves
either the old bundle or the new one.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from models.bundle import (
    EMBEDDINGS,
    ENCODER,
    ENGINE_DIR,
    INDEX,
    ITEMS,
    PROBES,
    Compatibility,
    EncoderInfo,
    IndexInfo,
    ItemRecord,
    ItemsFile,
    Manifest,
    Probe,
    ProbesFile,
    SearchDefaults,
    artifact_for,
    load_items,
    load_probes,
    utc_now_iso,
    verify_bundle,
    write_manifest,
)
from models.catalogue import Entry
from models.errors import BundleError, CatalogueError, ImageError
from models.images import is_image_file, read_image
from models.preprocess import PreprocessSpec, preprocess_batch

__all__ = ["EXPORT_INFO", "ExportInfo", "IndexParams", "read_export_info", "encode_entries",
           "build_annoy", "write_bundle", "commit_dir", "index_catalogue", "item_folder_entries",
           "enroll"]

log = logging.getLogger(__name__)

EXPORT_INFO = "export.json"  # written by `trainer export`, read by `trainer index`
# Defaults from bench/index.py (see the README's index benchmark).
DEFAULT_TREES = 50
DEFAULT_SEARCH_K = -1  # Annoy default: n_trees * n
DEFAULT_EXACT_BELOW = 20_000


class ExportInfo(BaseModel):
    """What `trainer export` knows about the encoder, for `trainer index`."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    run_id: str
    embedding_size: int = Field(ge=1)
    input: PreprocessSpec
    opset: int
    encoder_sha256: str
    backbone: Literal["lite0", "scratch"] = "scratch"
    pretrained: str | None = None
    precision: Literal["fp32", "int8"] = "fp32"
    head: Literal["projection", "whitened"] = "projection"  # trainer/whiten.py
    blend: float = Field(1.0, ge=0.0, le=1.0)  # share of the fine-tuned backbone (trainer/whiten.py)
    pool_power: float = Field(1.0, ge=1.0)  # generalised-mean pooling, 1 = average (trainer/whiten.py)
    parity: dict[str, float | int | str] = {}
    created: str = ""


@dataclass(frozen=True)
class IndexParams:
    n_trees: int = DEFAULT_TREES
    search_k: int = DEFAULT_SEARCH_K
    threshold: float = 0.5
    mode: str = "auto"
    exact_below: int = DEFAULT_EXACT_BELOW
    probes: int = 32
    probes_per_item: int = 3


def read_export_info(bundle_dir: Path) -> ExportInfo:
    p = Path(bundle_dir) / EXPORT_INFO
    try:
        return ExportInfo.model_validate_json(p.read_bytes())
    except FileNotFoundError:
        raise BundleError(f"{p}: missing (run `trainer export RUN_DIR --out {bundle_dir}` first)") from None
    except ValueError as exc:
        raise BundleError(f"{p}: invalid ({exc})") from None


def encode_entries(encoder, entries: Sequence[Entry], batch_size: int = 32, progress: bool = True
                   ) -> tuple[np.ndarray, list[Entry], list[str]]:
    """Encode readable entries in batches: (embeddings, kept entries, skipped
    messages). Unreadable images are logged and skipped, never fatal."""
    try:
        from tqdm import tqdm
    except ImportError:  # the device may not have tqdm
        tqdm = None
    bar = tqdm(total=len(entries), unit="img", desc="encoding", disable=not progress) if tqdm else None
    embs, kept, skipped = [], [], []
    for start in range(0, len(entries), batch_size):
        imgs = []
        for e in entries[start : start + batch_size]:
            try:
                imgs.append(read_image(e.path))
                kept.append(e)
            except ImageError as exc:
                log.warning("skipping unreadable image: %s", exc)
                skipped.append(str(exc))
        if imgs:
            embs.append(encoder.encode(preprocess_batch(imgs, encoder.spec)))
        if bar:
            bar.update(min(batch_size, len(entries) - start))
    if bar:
        bar.close()
    d = encoder.embedding_size
    emb = np.concatenate(embs).astype(np.float32) if embs else np.zeros((0, d), np.float32)
    return emb, kept, skipped


def build_annoy(emb: np.ndarray, n_trees: int, path: Path, seed: int = 0) -> None:
    """Build an angular Annoy index of ``emb`` (row i = item i) at ``path``,
    via a temp file and a rename (a mapped file is never rewritten)."""
    from annoy import AnnoyIndex

    index = AnnoyIndex(emb.shape[1], "angular")
    index.set_seed(seed)
    for i, v in enumerate(emb):
        index.add_item(i, v.tolist())
    index.build(n_trees)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    index.save(str(tmp))
    index.unload()
    os.replace(tmp, path)


@dataclass
class _Vectors:
    emb: np.ndarray  # (N, D) float32
    item_ids: list[str]
    sources: list[str]


def _probe_bytes(path: Path) -> tuple[bytes, bool]:
    """JPEG sources are copied byte for byte (so the probe reproduces its
    stored vector exactly); others are re-encoded as JPEG."""
    if path.suffix.lower() in (".jpg", ".jpeg"):
        return path.read_bytes(), True
    import cv2

    ok, buf = cv2.imencode(".jpg", read_image(path), [cv2.IMWRITE_JPEG_QUALITY, 95])
    if not ok:
        raise ImageError(f"{path}: cannot re-encode as JPEG")
    return buf.tobytes(), False


def write_bundle(stage: Path, source_dir: Path, info: ExportInfo, vec: _Vectors,
                 names: dict[str, str], probes: list[tuple[bytes, str, int | None]],
                 params: IndexParams, bundle_version: int) -> Manifest:
    """Write a complete bundle into the empty folder ``stage``: encoder (and
    export.json) copied from ``source_dir``, vectors sorted by item, Annoy
    index, items, probes, and manifest.json last."""
    if len(vec.item_ids) == 0:
        raise CatalogueError("no readable images to index")
    item_list = sorted(set(vec.item_ids))
    pos = {iid: k for k, iid in enumerate(item_list)}
    order = sorted(range(len(vec.item_ids)), key=lambda i: (pos[vec.item_ids[i]], i))
    new_of_old = {old: new for new, old in enumerate(order)}
    emb = np.ascontiguousarray(vec.emb[order], dtype=np.float32)

    shutil.copy2(source_dir / ENCODER, stage / ENCODER)
    if (source_dir / EXPORT_INFO).is_file():
        shutil.copy2(source_dir / EXPORT_INFO, stage / EXPORT_INFO)
    with open(stage / EMBEDDINGS, "wb") as f:
        np.save(f, emb, allow_pickle=False)
    build_annoy(emb, params.n_trees, stage / INDEX)
    items = ItemsFile(items=tuple(ItemRecord(item_id=i, name=names.get(i, i.rsplit("/", 1)[-1]))
                                  for i in item_list),
                      vectors=tuple({"item": pos[vec.item_ids[i]], "source": vec.sources[i]}
                                    for i in order))
    (stage / ITEMS).write_text(items.model_dump_json(indent=1) + "\n")
    probe_recs = []
    for k, (data, item_id, old_vec) in enumerate(probes):
        name = f"probe-{k:03d}.jpg"
        (stage / name).write_bytes(data)
        probe_recs.append(Probe(file=name, item_id=item_id,
                                vector=None if old_vec is None else new_of_old[old_vec]))
    (stage / PROBES).write_text(ProbesFile(probes=tuple(probe_recs)).model_dump_json(
        indent=1, exclude_none=True) + "\n")

    arts = [artifact_for(stage / ENCODER, "encoder"), artifact_for(stage / INDEX, "index"),
            artifact_for(stage / EMBEDDINGS, "embeddings"), artifact_for(stage / ITEMS, "items"),
            artifact_for(stage / PROBES, "probes")]
    arts += [artifact_for(stage / p.file, "probe-image") for p in probe_recs]
    if (stage / EXPORT_INFO).is_file():
        arts.append(artifact_for(stage / EXPORT_INFO, "other"))
    enc_sha = arts[0].sha256
    if enc_sha != info.encoder_sha256:
        raise BundleError(f"{source_dir / ENCODER}: sha256 differs from {EXPORT_INFO} "
                          "(encoder replaced after export?)")
    m = Manifest(
        bundle_version=bundle_version, created=utc_now_iso(), embedding_size=info.embedding_size,
        input=info.input, item_count=len(item_list),
        encoder=EncoderInfo(sha256=enc_sha, opset=info.opset, run_id=info.run_id, backbone=info.backbone,
                            pretrained=info.pretrained, precision=info.precision),
        index=IndexInfo(sha256=arts[1].sha256, dim=info.embedding_size, n_vectors=len(emb),
                        n_trees=params.n_trees, search_k=params.search_k, encoder_sha256=enc_sha),
        search=SearchDefaults(threshold=params.threshold, mode=params.mode,
                              exact_below=params.exact_below),
        compatibility=Compatibility(embedding_size=info.embedding_size, input=info.input),
        artifacts=tuple(arts))
    write_manifest(stage, m)
    return m


# ---------------------------------------------------------------- atomic swap

def _fsync_tree(root: Path) -> None:
    for p in [*root.iterdir(), root]:
        if p.is_file() or p == root:
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two directory entries (Linux renameat2 RENAME_EXCHANGE)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def commit_dir(stage: Path, target: Path) -> None:
    """Make the complete folder ``stage`` become ``target`` in one step; the
    device-local engine cache moves along; the old folder is removed."""
    if target.is_symlink():
        raise BundleError(f"{target}: is a symbolic link; give the bundle folder itself")
    _fsync_tree(stage)
    if not target.exists():
        os.rename(stage, target)
    else:
        if _exchange(stage, target):
            old = stage
        else:
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.rename(target, old)
            os.rename(stage, target)
        if (old / ENGINE_DIR).is_dir() and not (target / ENGINE_DIR).exists():
            os.rename(old / ENGINE_DIR, target / ENGINE_DIR)
        shutil.rmtree(old, ignore_errors=True)
    fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def staging(target: Path):
    """A fresh staging folder beside ``target``, removed unless committed."""
    stage = target.parent / f".{target.name}.stage-{os.getpid()}"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    try:
        yield stage
    finally:
        shutil.rmtree(stage, ignore_errors=True)


# ---------------------------------------------------------------- operations

def _pick_probes(vec: _Vectors, paths: list[Path], limit: int, per_item: int
                 ) -> list[tuple[bytes, str, int | None]]:
    """Round-robin over items: one photo of each, then a second, ..."""
    by_item: dict[str, list[int]] = {}
    for i, iid in enumerate(vec.item_ids):
        by_item.setdefault(iid, []).append(i)
    out: list[tuple[bytes, str, int | None]] = []
    for rnd in range(per_item):
        for iid in sorted(by_item):
            if len(out) >= limit:
                return out
            if rnd < len(by_item[iid]):
                i = by_item[iid][rnd]
                data, exact = _probe_bytes(paths[i])
                out.append((data, iid, i if exact else None))
    return out


def index_catalogue(bundle_dir: Path, entries: Sequence[Entry], names: dict[str, str], encoder,
                    params: IndexParams = IndexParams(), root: Path | None = None,
                    progress: bool = True) -> tuple[Manifest, list[str]]:
    """Encode ``entries`` and make ``bundle_dir`` (an exported, or already
    indexed, bundle) a complete bundle. Returns (manifest, skipped images)."""
    bundle_dir = Path(bundle_dir)
    info = read_export_info(bundle_dir)
    labelled = [e for e in entries if e.item_id is not None]
    if not labelled:
        raise CatalogueError("catalogue has no labelled images to index")
    emb, kept, skipped = encode_entries(encoder, labelled, progress=progress)
    if not kept:
        raise CatalogueError("no readable images in the catalogue")

    def rel(p: Path) -> str:
        try:
            return p.relative_to(root).as_posix() if root else p.as_posix()
        except ValueError:
            return p.as_posix()

    vec = _Vectors(emb, [e.item_id for e in kept], [rel(e.path) for e in kept])
    probes = _pick_probes(vec, [e.path for e in kept], params.probes, params.probes_per_item)
    version = 1
    with contextlib.suppress(BundleError):
        from models.bundle import read_manifest

        version = read_manifest(bundle_dir).bundle_version + 1  # re-indexing a bundle
    with staging(bundle_dir) as stage:
        m = write_bundle(stage, bundle_dir, info, vec, names, probes, params, version)
        commit_dir(stage, bundle_dir)
    return m, skipped


def item_folder_entries(folders: Sequence[Path], item_id: str | None = None,
                        names: dict[str, str] | None = None) -> list[Entry]:
    """The photos of enrolment folders, one item each (the folder's name, or
    ``item_id`` for a single folder); CatalogueError naming a bad folder."""
    if item_id is not None and len(folders) != 1:
        raise CatalogueError("--item-id applies to a single ITEM_FOLDER")
    entries: list[Entry] = []
    for folder in folders:
        folder = Path(folder)
        if not folder.is_dir():
            raise CatalogueError(f"{folder}: no such item folder")
        iid = item_id or folder.resolve().name
        imgs = sorted(p for p in folder.iterdir() if is_image_file(p))
        if not imgs:
            raise CatalogueError(f"{folder}: no images in item folder")
        entries += [Entry(p, iid, (names or {}).get(iid)) for p in imgs]
    return entries


def enroll(bundle_dir: Path, folders: Sequence[Path], encoder, item_id: str | None = None,
           names: dict[str, str] | None = None, out: Path | None = None, progress: bool = True
           ) -> tuple[Manifest, list[str]]:
    """Add the photos in ``folders`` (one item each: the folder's name, or
    ``item_id``) to a verified bundle; rebuild its index from the stored plus
    the new embeddings; bump bundle_version. Writes ``out`` (default: the
    bundle itself, swapped atomically)."""
    bundle_dir = Path(bundle_dir)
    m = verify_bundle(bundle_dir)
    entries = item_folder_entries(folders, item_id, names)
    emb_new, kept, skipped = encode_entries(encoder, entries, progress=progress)
    if not kept:
        raise CatalogueError("none of the new photos is readable")

    old_items = load_items(bundle_dir)
    old_emb = np.load(bundle_dir / EMBEDDINGS, allow_pickle=False)
    ids = [old_items.items[v.item].item_id for v in old_items.vectors]
    vec = _Vectors(np.concatenate([old_emb, emb_new]), ids + [e.item_id for e in kept],
                   [v.source for v in old_items.vectors] + [f"enrolled/{e.path.parent.name}/{e.path.name}"
                                                           for e in kept])
    all_names = {i.item_id: i.name for i in old_items.items}
    for e in kept:
        all_names.setdefault(e.item_id, e.name or e.item_id.rsplit("/", 1)[-1])
    probes = [((bundle_dir / p.file).read_bytes(), p.item_id, p.vector)
              for p in load_probes(bundle_dir).probes]
    known = {p[1] for p in probes}
    n_old = len(ids)
    for k, e in enumerate(kept):  # one probe for each item the bundle did not probe yet
        if e.item_id not in known:
            data, exact = _probe_bytes(e.path)
            probes.append((data, e.item_id, n_old + k if exact else None))
            known.add(e.item_id)
    info = ExportInfo(run_id=m.encoder.run_id, embedding_size=m.embedding_size, input=m.input,
                      opset=m.encoder.opset, encoder_sha256=m.encoder.sha256, backbone=m.encoder.backbone,
                      pretrained=m.encoder.pretrained, precision=m.encoder.precision)
    params = IndexParams(n_trees=m.index.n_trees, search_k=m.index.search_k,
                         threshold=m.search.threshold, mode=m.search.mode,
                         exact_below=m.search.exact_below)
    target = Path(out) if out else bundle_dir
    if out and target.exists():
        raise BundleError(f"{target}: already exists (choose a new --out folder)")
    with staging(target) as stage:
        new = write_bundle(stage, bundle_dir, info, vec, all_names, probes, params,
                           m.bundle_version + 1)
        commit_dir(stage, target)
    return new, skipped
