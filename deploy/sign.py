"""`deploy sign BUNDLE_DIR --key KEY`: finalise a bundle as a release and sign it.

Sets the release fields of manifest.json (bundle_version, expiry, each
artifact's URL: its file name, relative to the manifest, unless --base-url
is given), rewrites the manifest atomically, and writes manifest.sig: the
base64 Ed25519 signature over the exact bytes of manifest.json. The bundle's
files are verified first, so a signature never covers a bundle whose files
do not match their checksums.
"""

from __future__ import annotations

import argparse
from datetime import datetime, timedelta, timezone
from pathlib import Path

from models.bundle import (
    SIGNATURE,
    Manifest,
    atomic_write_bytes,
    verify_bundle,
    write_manifest,
)
from models.errors import ConfigError
from models.signing import encode_signature, key_id, load_private_key, sign

__all__ = ["sign_bundle"]


def _iso(dt: datetime) -> str:
    return dt.astimezone(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def sign_bundle(bundle_dir: str | Path, key_path: str | Path, *, expires: datetime | None = None,
                expires_days: float = 30.0, version: int | None = None,
                base_url: str | None = None) -> tuple[Manifest, str]:
    """Finalise and sign ``bundle_dir`` in place; return (manifest, key id)."""
    root = Path(bundle_dir)
    key = load_private_key(key_path)  # fail on a bad key before touching the bundle
    m = verify_bundle(root)
    if expires is None:
        if expires_days <= 0:
            raise ConfigError(f"--expires-days {expires_days}: must be positive")
        expires = datetime.now(timezone.utc) + timedelta(days=expires_days)
    if base_url is not None and not base_url.endswith("/"):
        base_url += "/"
    data = m.model_dump(mode="json", exclude_none=True)
    if version is not None:
        if version < 1:
            raise ConfigError(f"--version {version}: must be >= 1")
        data["bundle_version"] = int(version)
    data["expires"] = _iso(expires)
    for a in data["artifacts"]:
        a["url"] = (base_url or "") + a["name"]
    new = Manifest.model_validate(data)
    raw = write_manifest(root, new)
    sig = sign(key, raw)
    atomic_write_bytes(root / SIGNATURE, (encode_signature(sig) + "\n").encode())
    return new, key_id(key.public_key())


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", type=Path, metavar="BUNDLE_DIR")
    p.add_argument("--key", type=Path, required=True, help="Ed25519 private key (deploy keygen)")
    p.add_argument("--expires-days", type=float, default=30.0,
                   help="kiosks refuse the release after this many days (default 30)")
    p.add_argument("--version", type=int, default=None,
                   help="release version (default: the bundle's bundle_version); kiosks only "
                   "accept a version above their active one")
    p.add_argument("--base-url", default=None,
                   help="absolute URL prefix for the artifacts (default: relative to the manifest)")


def run(args: argparse.Namespace) -> int:
    m, kid = sign_bundle(args.bundle, args.key, expires_days=args.expires_days,
                         version=args.version, base_url=args.base_url)
    print(f"signed {args.bundle / 'manifest.json'}: release {m.bundle_version}, "
          f"{len(m.artifacts)} artifacts, expires {m.expires}, key {kid}")
    return 0
