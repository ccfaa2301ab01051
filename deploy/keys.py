"""`deploy keygen --out DIR [--name NAME]`: an Ed25519 release-signing key pair.

NAME.key (PKCS8 PEM, mode 0600) stays on the release workstation (or an HSM);
NAME.pub is copied to every kiosk and listed in `[update] trusted_keys`.
An existing key is never overwritten.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from models.signing import write_keypair


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, required=True, help="folder for NAME.key and NAME.pub")
    p.add_argument("--name", default="release", help="file name stem (default: release)")


def run(args: argparse.Namespace) -> int:
    key, pub, kid = write_keypair(args.out, args.name)
    print(f"private key: {key} (keep it secret; mode 0600)")
    print(f"public key:  {pub} (copy to the kiosks: [update] trusted_keys)")
    print(f"key id:      {kid}")
    return 0
