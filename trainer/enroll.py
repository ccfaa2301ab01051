"""`trainer enroll BUNDLE_DIR ITEM_FOLDER...`: add items, or new photos of
known items, to a bundle without retraining. The same command as
`edge-runtime enroll` (core: models.indexing.enroll, torch-free)."""

from __future__ import annotations

from edge_runtime.cmd_enroll import add_arguments, run

__all__ = ["add_arguments", "run"]
