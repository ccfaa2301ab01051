"""`trainer` command line: one module per subcommand (see models.cli_util)."""

from __future__ import annotations

from collections.abc import Sequence

from models.cli_util import run_cli

COMMANDS = {
    "fit": ("trainer.fit", "train the denoising autoencoder on a catalogue"),
    "head": ("trainer.head", "fit a run's whitened head (closed form) on its catalogue"),
    "eval": ("trainer.evaluate", "retrieval accuracy of a run on a gallery and queries"),
    "preview": ("trainer.preview", "contact sheet of catalogue photos and their distorted views"),
    "cluster": ("trainer.cluster", "group unlabelled images by their embeddings"),
    "classify": ("trainer.classify", "label images by nearest-neighbour vote against a gallery"),
    "export": ("trainer.export", "export a run's encoder to ONNX as a new bundle"),
    "index": ("trainer.indexer", "encode a catalogue with a bundle's encoder and build its index"),
    "enroll": ("trainer.enroll", "add items or photos to a bundle's index without retraining"),
}


def main(argv: Sequence[str] | None = None) -> int:
    from edge_runtime import __version__

    return run_cli("trainer", "Train, evaluate, export and index the product encoder.", COMMANDS, argv,
                   version=__version__)


if __name__ == "__main__":
    raise SystemExit(main())
