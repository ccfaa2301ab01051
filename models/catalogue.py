"""Catalogue input: a folder tree (each folder that directly holds images is
one item, id = its path relative to the root) or a CSV ``path,item_id[,name]``.

Listing a catalogue never decodes images; readers report corrupt files when
they meet them (see ``load_images``), so one bad photo never stops a run.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.errors import CatalogueError, ImageError
from models.images import is_image_file, read_image

__all__ = ["Entry", "Catalogue", "load_catalogue", "iter_images"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Entry:
    path: Path
    item_id: str | None  # None: unlabelled
    name: str | None = None


@dataclass(frozen=True)
class Catalogue:
    root: Path
    entries: tuple[Entry, ...]

    @property
    def item_ids(self) -> list[str]:
        """Sorted distinct item ids (labelled entries only)."""
        return sorted({e.item_id for e in self.entries if e.item_id is not None})

    def names(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for e in self.entries:
            if e.item_id is not None:
                out.setdefault(e.item_id, e.name or e.item_id.rsplit("/", 1)[-1])
        return out

    def __len__(self) -> int:
        return len(self.entries)


def _from_tree(root: Path) -> list[Entry]:
    entries: list[Entry] = []
    for folder in sorted([root, *(p for p in root.rglob("*") if p.is_dir())]):
        if any(part.startswith(".") for part in folder.relative_to(root).parts):
            continue
        images = sorted(p for p in folder.iterdir() if is_image_file(p))
        if not images:
            continue
        rel = folder.relative_to(root).as_posix()
        item_id = rel if rel != "." else root.name
        entries.extend(Entry(p, item_id, item_id.rsplit("/", 1)[-1]) for p in images)
    return entries


def _from_csv(path: Path) -> list[Entry]:
    entries: list[Entry] = []
    try:
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise CatalogueError(f"{path}: cannot read catalogue CSV ({exc})") from exc
    if rows and [c.strip().lower() for c in rows[0][:2]] == ["path", "item_id"]:
        rows = rows[1:]
        start = 2
    else:
        start = 1
    for lineno, row in enumerate(rows, start=start):
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) not in (2, 3):
            raise CatalogueError(f"{path}:{lineno}: expected path,item_id[,name], got {len(row)} fields")
        img = Path(row[0].strip())
        if not img.is_absolute():
            img = path.parent / img
        item_id = row[1].strip()
        if not item_id:
            raise CatalogueError(f"{path}:{lineno}: empty item_id")
        name = row[2].strip() if len(row) == 3 and row[2].strip() else None
        entries.append(Entry(img, item_id, name))
    return entries


def load_catalogue(source: str | Path, *, labelled: bool = True) -> Catalogue:
    """List a catalogue. ``labelled=False`` treats every image as unlabelled
    (``--unlabelled DIR``: store captures with no item)."""
    src = Path(source)
    if not src.exists():
        raise CatalogueError(f"{src}: no such catalogue folder or CSV")
    if src.is_file():
        if src.suffix.lower() != ".csv":
            raise CatalogueError(f"{src}: a catalogue is a folder or a .csv file")
        entries = _from_csv(src)
        root = src.parent
    else:
        entries = _from_tree(src)
        root = src
    if not labelled:
        entries = [Entry(e.path, None, None) for e in entries]
    if not entries:
        raise CatalogueError(f"{src}: catalogue is empty (no images found)")
    return Catalogue(root=root, entries=tuple(entries))


def iter_images(entries: list[Entry] | tuple[Entry, ...]) -> Iterator[tuple[Entry, np.ndarray]]:
    """Yield (entry, BGR image) for every readable entry; log and skip the rest."""
    for e in entries:
        try:
            yield e, read_image(e.path)
        except ImageError as exc:
            log.warning("skipping unreadable image: %s", exc)
