"""Local enrolment as an overlay: extra photos on top of the fleet's release.

A kiosk that enrols a product on site (``edge-runtime enroll STORE ...``)
must not fork away from its fleet. So enrolment never touches a release:
it keeps the photos in ``STORE/overlay/`` beside the releases, and the
kiosk searches them next to whichever release is active. The release keeps
its fleet version and its signature, and the fleet's next release installs
as usual.

The rule, for every release the kiosk runs (the first, each update, each
rollback): **the overlay is re-applied**. Its photos are encoded with that
release's encoder (kept per encoder in ``embeddings-<sha16>.npy``, computed
by the update's verifier process or at the first start with that encoder);
an overlay item whose id the release also has adds its photos to that item,
any other is an extra item. A release never drops the overlay; only the
operator does, on the device (``edge-runtime enroll STORE --clear-overlay``).
The release's self-test runs without the overlay, so local photos cannot make
a fleet release fail.

Layout: ``overlay.json`` (``{"schema": "kiosk.overlay/1", "items":
[{"item_id", "name", "photos": [file names]}]}``) and the photos. A new
overlay is written in full beside the old one and swapped in with one
rename, like a bundle.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from models.bundle import atomic_write_bytes, check_artifact_name
from models.errors import BundleError, CatalogueError, ImageError, first_validation_error
from models.images import read_image
from models.indexing import commit_dir, item_folder_entries

__all__ = ["OVERLAY_DIR", "OverlayVectors", "find_overlay", "read_overlay", "overlay_vectors",
           "add_to_overlay", "clear_overlay"]

OVERLAY_DIR = "overlay"
DOC = "overlay.json"
MAX_PHOTOS = 10000


class OverlayItem(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    item_id: str = Field(min_length=1, max_length=512)
    name: str = Field(max_length=512)
    photos: tuple[str, ...] = Field(min_length=1)

    @field_validator("photos")
    @classmethod
    def _names(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for name in v:
            check_artifact_name(name)
        return v


class OverlayDoc(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    schema_: Literal["kiosk.overlay/1"] = Field("kiosk.overlay/1", alias="schema")
    items: tuple[OverlayItem, ...] = ()


@dataclass(frozen=True)
class OverlayVectors:
    """The overlay as the matcher uses it: one row of ``emb`` per photo, and
    the item id and name of each row."""

    emb: np.ndarray
    item_ids: list[str]
    names: dict[str, str]

    def summary(self) -> dict[str, int]:
        return {"items": len(set(self.item_ids)), "vectors": len(self.item_ids)}


def find_overlay(bundle_dir: str | Path) -> Path | None:
    """The overlay of the bundle store that ``bundle_dir`` is a release of, if any."""
    p = Path(bundle_dir).resolve()
    if p.parent.name != "releases":
        return None
    d = p.parent.parent / OVERLAY_DIR
    return d if (d / DOC).is_file() else None


def read_overlay(overlay_dir: Path) -> OverlayDoc:
    path = Path(overlay_dir) / DOC
    try:
        return OverlayDoc.model_validate_json(path.read_bytes())
    except FileNotFoundError:
        return OverlayDoc()
    except OSError as exc:
        raise BundleError(f"{path}: cannot read ({exc.strerror})") from None
    except ValidationError as exc:
        loc, msg = first_validation_error(exc)
        raise BundleError(f"{path}: invalid at {loc}: {msg}") from None


def overlay_vectors(overlay_dir: Path, encoder_sha256: str,
                    encode: Callable[[list[np.ndarray]], np.ndarray]) -> OverlayVectors:
    """The overlay's photos embedded by the encoder ``encoder_sha256`` (with
    ``encode``), from the per-encoder cache or computed now and cached."""
    doc = read_overlay(overlay_dir)
    files = [f for it in doc.items for f in it.photos]
    ids = [it.item_id for it in doc.items for _ in it.photos]
    cache = Path(overlay_dir) / f"embeddings-{encoder_sha256[:16]}.npy"
    digest = hashlib.sha256("\n".join(files).encode()).hexdigest()[:16]
    emb = None
    if cache.is_file():
        try:
            stored = np.load(cache, allow_pickle=False)
            meta = json.loads(cache.with_suffix(".json").read_text())
            if meta.get("photos") == digest and stored.shape[0] == len(files):
                emb = stored
        except (OSError, ValueError):
            emb = None
    if emb is None:
        emb = np.asarray(encode([read_image(Path(overlay_dir) / f) for f in files]),
                         dtype=np.float32) if files else np.zeros((0, 1), np.float32)
        _write_cache(cache, emb, digest)
    return OverlayVectors(np.ascontiguousarray(emb, dtype=np.float32), ids,
                          {it.item_id: it.name for it in doc.items})


def _write_cache(cache: Path, emb: np.ndarray, digest: str) -> None:
    """Derived data: written atomically; a failure only means encoding again next time."""
    tmp = cache.with_name(f".{cache.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            np.save(f, emb, allow_pickle=False)
        os.replace(tmp, cache)
        atomic_write_bytes(cache.with_suffix(".json"), json.dumps({"photos": digest}).encode())
    except OSError:
        tmp.unlink(missing_ok=True)


def add_to_overlay(store_root: Path, folders: Sequence[Path], *, item_id: str | None = None,
                   names: dict[str, str] | None = None) -> tuple[OverlayDoc, int, list[str]]:
    """Add the photos in ``folders`` (one item each: the folder's name, or
    ``item_id``) to the store's overlay. Returns (new overlay, photos added,
    unreadable files skipped)."""
    entries = item_folder_entries(folders, item_id, names)
    target = Path(store_root) / OVERLAY_DIR
    old = read_overlay(target)
    items = {it.item_id: (it.name, list(it.photos)) for it in old.items}
    stage = Path(store_root) / f".{OVERLAY_DIR}.stage-{os.getpid()}"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    try:
        for it in old.items:
            for f in it.photos:
                shutil.copyfile(target / f, stage / f)
        n = sum(len(p) for _, p in items.values())
        added, skipped = 0, []
        for e in entries:
            try:
                read_image(e.path)
            except ImageError:   # reported, not fatal
                skipped.append(str(e.path))
                continue
            name, kept = items.setdefault(e.item_id, (e.name or e.item_id.rsplit("/", 1)[-1], []))
            fname = f"p-{n:06d}{e.path.suffix.lower()}"
            shutil.copyfile(e.path, stage / fname)
            kept.append(fname)
            n, added = n + 1, added + 1
        if not added:
            raise CatalogueError("none of the new photos is readable")
        if n > MAX_PHOTOS:
            raise CatalogueError(f"the overlay would hold {n} photos, more than {MAX_PHOTOS}; "
                                 "enrol them in a fleet release instead")
        doc = OverlayDoc(items=tuple(OverlayItem(item_id=i, name=nm, photos=tuple(ps))
                                     for i, (nm, ps) in items.items()))
        (stage / DOC).write_text(doc.model_dump_json(by_alias=True, indent=2) + "\n")
        commit_dir(stage, target)   # complete, fsynced, swapped in one step
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return doc, added, skipped


def clear_overlay(store_root: Path) -> bool:
    """Remove the store's overlay; False when there was none."""
    target = Path(store_root) / OVERLAY_DIR
    if not target.exists():
        return False
    trash = Path(store_root) / f".{OVERLAY_DIR}.removed-{os.getpid()}"
    os.rename(target, trash)
    shutil.rmtree(trash, ignore_errors=True)
    return True
