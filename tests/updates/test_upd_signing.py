"""Signing: key generation, detached signatures over exact bytes, `deploy keygen/sign`."""

from __future__ import annotations

import json
import stat

import pytest

from deploy.cli import main as deploy_main
from models.bundle import read_manifest, verify_bundle
from models.errors import ConfigError, UpdateError
from models.signing import (
    decode_signature,
    encode_signature,
    key_id,
    load_private_key,
    load_public_key,
    load_public_keys,
    sign,
    verify,
    write_keypair,
)


def test_keygen_writes_private_0600_and_never_overwrites(tmp_path, capsys):
    assert deploy_main(["keygen", "--out", str(tmp_path / "k"), "--name", "rel"]) == 0
    key, pub = tmp_path / "k" / "rel.key", tmp_path / "k" / "rel.pub"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    # the header spelt in parts: the key is generated above, none is committed
    assert key.read_bytes().startswith(b"-----BEGIN " + b"PRIVATE KEY-----")
    assert pub.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    kid = key_id(load_public_key(pub))
    assert kid in capsys.readouterr().out and len(kid) == 16
    before = key.read_bytes()
    assert deploy_main(["keygen", "--out", str(tmp_path / "k"), "--name", "rel"]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    assert key.read_bytes() == before


def test_signature_is_over_exact_bytes_and_any_pinned_key(tmp_path):
    k1, p1, _ = write_keypair(tmp_path, "a")
    k2, p2, _ = write_keypair(tmp_path, "b")
    data = b'{"x": 1}\n'
    sig = encode_signature(sign(load_private_key(k2), data))
    keys = load_public_keys([p1, p2])  # rotation: both pinned
    assert verify(data, sig, keys) == key_id(load_public_key(p2))
    with pytest.raises(UpdateError, match="not signed by a pinned key"):
        verify(data + b" ", sig, keys)  # same JSON meaning, other bytes
    with pytest.raises(UpdateError, match="not signed by a pinned key"):
        verify(data, sig, load_public_keys([p1]))
    with pytest.raises(UpdateError, match="base64"):
        verify(data, "not base64!!", keys)
    with pytest.raises(UpdateError, match="64"):
        decode_signature(encode_signature(b"\0" * 63))
    with pytest.raises(ConfigError, match="no public key pinned"):
        load_public_keys([])
    with pytest.raises(ConfigError, match="not an Ed25519 public key|not a PEM public key"):
        load_public_key(k1)


def test_deploy_sign_finalises_release_fields(tmp_path, site, upd_keys, capsys):
    b = site.copy("v1", "sign-test")
    assert deploy_main(["sign", str(b), "--key", str(upd_keys.key), "--version", "7",
                        "--expires-days", "2", "--base-url", "https://cdn.example/r7"]) == 0
    assert "release 7" in capsys.readouterr().out
    m = verify_bundle(b)
    assert m.bundle_version == 7 and m.expires is not None
    assert all(a.url == f"https://cdn.example/r7/{a.name}" for a in m.artifacts)
    raw = (b / "manifest.json").read_bytes()
    verify(raw, (b / "manifest.sig").read_text(), load_public_keys([upd_keys.pub]))
    # default: URLs relative to the manifest
    assert deploy_main(["sign", str(b), "--key", str(upd_keys.key)]) == 0
    assert {a.url for a in read_manifest(b).artifacts} == {a.name for a in m.artifacts}
    assert json.loads((b / "manifest.json").read_text())["bundle_version"] == 7


def test_deploy_sign_refuses_tampered_bundle_and_bad_key(tmp_path, site, upd_keys, capsys):
    b = site.copy("v1", "sign-bad")
    with open(b / "items.json", "ab") as f:
        f.write(b" ")
    assert deploy_main(["sign", str(b), "--key", str(upd_keys.key)]) == 2
    assert "items.json" in capsys.readouterr().err
    assert deploy_main(["sign", str(b), "--key", str(upd_keys.pub)]) == 2
    assert "private key" in capsys.readouterr().err
