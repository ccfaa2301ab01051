"""Ed25519 detached signatures over the exact bytes of a bundle's manifest.json.

Why detached and over bytes: the kiosk must check the signature *before* it
parses anything an attacker could have written, so what is signed is the byte
string as served, never a re-serialisation. The manifest in turn pins the size
and sha256 of every artifact, so one signature covers the whole release.

Keys: PKCS8 PEM private keys (mode 0600, never overwritten) and
SubjectPublicKeyInfo PEM public keys. A key id is the first 16 hex digits of
sha256(raw 32-byte public key); it names keys in logs and status messages.
A kiosk pins several public keys so that a signing key can be rotated.

The signature file (manifest.sig) holds the base64 of the 64-byte signature
and a newline. No torch, no pickle: this module runs on the device.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from models.errors import ConfigError, UpdateError

__all__ = [
    "SIGNATURE_BYTES", "MAX_SIGNATURE_TEXT", "key_id", "generate_keypair", "write_keypair",
    "load_private_key", "load_public_key", "load_public_keys", "sign", "encode_signature",
    "decode_signature", "verify",
]

SIGNATURE_BYTES = 64
MAX_SIGNATURE_TEXT = 256  # base64 of 64 bytes is 88 characters; anything longer is not ours
_MAX_KEY_FILE = 16 * 1024


def key_id(public_key: Ed25519PublicKey) -> str:
    """First 16 hex digits of sha256 over the raw public key bytes."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def generate_keypair() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` exclusively with ``mode`` (O_EXCL: an existing key is never replaced)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(path, mode)  # the umask may have removed bits; never added any


def write_keypair(out_dir: str | Path, name: str = "release") -> tuple[Path, Path, str]:
    """Write NAME.key (PKCS8 PEM, 0600) and NAME.pub (PEM) into ``out_dir``.

    Refuses to overwrite either file: losing a release key locks every kiosk
    that pins it out of future updates. Returns (key path, pub path, key id)."""
    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise ConfigError(f"key name {name!r} must be a plain file name")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    key_path, pub_path = out / f"{name}.key", out / f"{name}.pub"
    for p in (key_path, pub_path):
        if p.exists() or p.is_symlink():
            raise ConfigError(f"{p}: already exists; refusing to overwrite a key")
    priv = generate_keypair()
    pem = priv.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
    pub = priv.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)
    _write_new(key_path, pem, 0o600)
    _write_new(pub_path, pub, 0o644)
    return key_path, pub_path, key_id(priv.public_key())


def _read_small(path: Path, what: str) -> bytes:
    try:
        if path.stat().st_size > _MAX_KEY_FILE:
            raise ConfigError(f"{path}: too large to be an Ed25519 {what}")
        return path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: {what} file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read {what} ({exc.strerror})") from None


def load_private_key(path: str | Path) -> Ed25519PrivateKey:
    path = Path(path)
    data = _read_small(path, "private key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{path}: not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{path}: not an Ed25519 private key")
    return key


def load_public_key(path: str | Path) -> Ed25519PublicKey:
    path = Path(path)
    data = _read_small(path, "public key")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{path}: not a PEM public key ({exc})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"{path}: not an Ed25519 public key")
    return key


def load_public_keys(paths: Iterable[str | Path]) -> dict[str, Ed25519PublicKey]:
    """Pinned keys by key id. An empty list is an error: a kiosk that trusts
    no key must not accept updates at all, and saying so beats a silent no."""
    keys: dict[str, Ed25519PublicKey] = {}
    for p in paths:
        k = load_public_key(p)
        keys[key_id(k)] = k
    if not keys:
        raise ConfigError("update.trusted_keys: no public key pinned")
    return keys


def sign(private_key: Ed25519PrivateKey, data: bytes) -> bytes:
    """The raw 64-byte Ed25519 signature over ``data``."""
    return private_key.sign(data)


def encode_signature(sig: bytes) -> str:
    return base64.b64encode(sig).decode("ascii")


def decode_signature(text: str | bytes) -> bytes:
    """Strict base64 of exactly 64 bytes (surrounding whitespace allowed)."""
    if isinstance(text, bytes):
        if len(text) > MAX_SIGNATURE_TEXT:
            raise UpdateError("signature: longer than an Ed25519 signature")
        try:
            text = text.decode("ascii")
        except UnicodeDecodeError:
            raise UpdateError("signature: not base64 text") from None
    if not isinstance(text, str) or len(text) > MAX_SIGNATURE_TEXT:
        raise UpdateError("signature: not a base64 string of an Ed25519 signature")
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise UpdateError("signature: not valid base64") from None
    if len(raw) != SIGNATURE_BYTES:
        raise UpdateError(f"signature: {len(raw)} bytes, an Ed25519 signature has {SIGNATURE_BYTES}")
    return raw


def verify(data: bytes, signature: bytes | str, keys: Mapping[str, Ed25519PublicKey]) -> str:
    """Check ``signature`` over ``data`` against every pinned key; return the
    id of the key that verifies, else raise UpdateError. The signature does
    not name its key, so a signature by an unpinned key and a corrupted one are
    the same failure (and the message says which keys were tried)."""
    raw = signature if isinstance(signature, bytes) and len(signature) == SIGNATURE_BYTES \
        else decode_signature(signature)
    if not keys:
        raise UpdateError("signature: no public key is pinned on this kiosk")
    for kid, key in keys.items():
        try:
            key.verify(raw, data)
            return kid
        except InvalidSignature:
            continue
    raise UpdateError("signature: manifest is not signed by a pinned key "
                      f"(tried {', '.join(sorted(keys))})")
