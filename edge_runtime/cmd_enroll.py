"""`edge-runtime enroll BUNDLE_DIR ITEM_FOLDER...` (also `trainer enroll`):
encode a few photos with the bundle's own encoder, add them to the stored
embeddings, rebuild the index into a new folder and swap it in atomically,
bumping bundle_version. No training, no torch.

The new bundle is unsigned (its manifest changed); a kiosk that only accepts
signed updates gets enrolled items through a signed release instead. On a
bundle store (``edge_runtime.update.store``) the result is installed as a new
release; a running `edge-runtime run` picks it up at its next start."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from models.bundle import ENCODER, verify_bundle
from models.indexing import enroll

__all__ = ["add_arguments", "run"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle_dir", type=Path, metavar="BUNDLE_DIR",
                   help="a bundle folder (replaced atomically), or a bundle store (a new release "
                        "is installed and made current)")
    p.add_argument("folders", type=Path, nargs="+", metavar="ITEM_FOLDER",
                   help="one folder of photos per item; the item id is the folder's name")
    p.add_argument("--item-id", help="item id for a single ITEM_FOLDER (default: its name)")
    p.add_argument("--name", help="display name of a new item (default: the item id's last part)")
    p.add_argument("--out", type=Path, metavar="NEW_BUNDLE_DIR",
                   help="write the enlarged bundle here instead of replacing BUNDLE_DIR")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from edge_runtime.encoders.onnx_backend import OnnxEncoder

    names = None
    if args.name:
        if len(args.folders) != 1:
            from models.errors import ConfigError

            raise ConfigError("--name applies to a single ITEM_FOLDER")
        names = {args.item_id or args.folders[0].resolve().name: args.name}
    bundle_dir, store = args.bundle_dir, None
    from edge_runtime.update.store import BundleStore, is_store

    if is_store(bundle_dir):
        store = BundleStore(bundle_dir)
        bundle_dir = store.recover()
    m = verify_bundle(bundle_dir)
    encoder = OnnxEncoder(bundle_dir / ENCODER, m.input, m.embedding_size, threads=args.threads)
    try:
        if store is not None and args.out is None:
            # A bundle store's releases are never modified: stage a new
            # release beside them and install it (current -> the new one).
            staged = store.staging / f"enroll-{os.getpid()}-{m.bundle_version + 1}"
            new, skipped = enroll(bundle_dir, args.folders, encoder, item_id=args.item_id,
                                  names=names, out=staged, progress=not args.no_progress)
            dest = store.install(staged)
        else:
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
