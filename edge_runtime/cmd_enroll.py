"""`edge-runtime enroll BUNDLE_DIR ITEM_FOLDER...` (also `trainer enroll`):
add a few photos (more of an item, or a new item) without retraining. No torch.

On a bundle folder (the workstation): encode the photos with the bundle's
own encoder, add them to the stored embeddings, rebuild the index into a
new folder and swap it in atomically, bumping bundle_version; sign the
result with `deploy sign` to ship it to the fleet.

On a bundle store (a kiosk, ``[update] store_dir``): the photos go into the
store's local overlay (edge_runtime/overlay.py) and no release changes, so
the kiosk keeps its fleet version and the fleet's next release still
installs; the overlay is re-applied to every release the kiosk runs.
``--clear-overlay`` removes it. A running `edge-runtime run` picks the
overlay up at its next start.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from models.bundle import ENCODER, verify_bundle
from models.indexing import enroll

__all__ = ["add_arguments", "run"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle_dir", type=Path, metavar="BUNDLE_DIR",
                   help="a bundle folder (replaced atomically), or a bundle store (the photos "
                        "go into its local overlay; no release changes)")
    p.add_argument("folders", type=Path, nargs="*", metavar="ITEM_FOLDER",
                   help="one folder of photos per item; the item id is the folder's name")
    p.add_argument("--clear-overlay", action="store_true",
                   help="bundle store: remove its local overlay (every enrolled photo)")
    p.add_argument("--item-id", help="item id for a single ITEM_FOLDER (default: its name)")
    p.add_argument("--name", help="display name of a new item (default: the item id's last part)")
    p.add_argument("--out", type=Path, metavar="NEW_BUNDLE_DIR",
                   help="write the enlarged bundle here instead of replacing BUNDLE_DIR")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _store_overlay(store, args: argparse.Namespace, names: dict[str, str] | None) -> int:
    """Enrol into (or clear) the store's local overlay; the releases stay as they are."""
    from edge_runtime.matcher import Matcher
    from edge_runtime.overlay import add_to_overlay, clear_overlay, find_overlay

    current = store.recover()
    if args.clear_overlay:
        print(f"overlay of {store.root} removed" if clear_overlay(store.root)
              else f"{store.root} has no overlay")
        return 0
    doc, added, skipped = add_to_overlay(store.root, args.folders, item_id=args.item_id,
                                         names=names)
    with Matcher.open(current, overlay_dir=find_overlay(current)) as m:   # embeds and caches
        summary, version = m.overlay.summary(), m.manifest.bundle_version
    print(f"enrolled {added} photos into the local overlay of {store.root}: {summary['items']} "
          f"items, {summary['vectors']} photos; release {version} unchanged; {len(skipped)} unreadable skipped")
    for s in skipped:
        print(f"  skipped: {s}")
    return 0


def run(args: argparse.Namespace) -> int:
    from edge_runtime.encoders.onnx_backend import OnnxEncoder
    from edge_runtime.update.store import BundleStore, is_store
    from models.errors import ConfigError

    names = None
    if args.name:
        if len(args.folders) != 1:
            raise ConfigError("--name applies to a single ITEM_FOLDER")
        names = {args.item_id or args.folders[0].resolve().name: args.name}
    if is_store(args.bundle_dir) and args.out is None:
        if not args.folders and not args.clear_overlay:
            raise ConfigError("give ITEM_FOLDER(s) to enrol, or --clear-overlay")
        return _store_overlay(BundleStore(args.bundle_dir), args, names)
    if args.clear_overlay or not args.folders:
        raise ConfigError(f"{args.bundle_dir}: --clear-overlay and enrolling without "
                          "ITEM_FOLDER apply to a bundle store only")
    bundle_dir = args.bundle_dir
    if is_store(bundle_dir):   # --out: a new bundle from the store's active release
        bundle_dir = BundleStore(bundle_dir).recover()
    m = verify_bundle(bundle_dir)
    encoder = OnnxEncoder(bundle_dir / ENCODER, m.input, m.embedding_size, threads=args.threads)
    try:
        dest = args.out or bundle_dir
        new, skipped = enroll(bundle_dir, args.folders, encoder, item_id=args.item_id,
                              names=names, out=args.out, progress=not args.no_progress)
    finally:
        encoder.close()
    added = new.index.n_vectors - m.index.n_vectors
    print(f"enrolled {added} photos ({new.item_count - m.item_count} new items) -> "
          f"{dest} bundle v{new.bundle_version}, {new.item_count} items, "
          f"{new.index.n_vectors} vectors; {len(skipped)} unreadable skipped")
    for s in skipped:
        print(f"  skipped: {s}")
    return 0
