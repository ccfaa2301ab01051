"""Hypothesis fuzzing of everything an attacker controls before (and, with a
stolen-but-pinned key, after) the signature check: the command parsers and
the signed-manifest path. No input may crash; each is rejected with a reason."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_runtime.update.commands import (
    parse_rollback_command,
    parse_update_command,
    verified_manifest,
)
from models.bundle import Manifest, check_artifact_name
from models.errors import BundleError, UpdateError
from models.signing import encode_signature, generate_keypair, key_id, sign

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))

_KEY = generate_keypair()
_KEYS = {key_id(_KEY.public_key()): _KEY.public_key()}
_GOOD_SIG = "A" * 86 + "=="

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12),
                                                                      children, max_size=4),
    max_leaves=12)

update_like = st.fixed_dictionaries(
    {}, optional={
        "schema": st.sampled_from(["kiosk.update/1", "kiosk.update/2", ""]) | json_values,
        "command_id": st.sampled_from(["c1", "op:2026-01-01.7", "-x", "a" * 200, "a/b"]) | json_values,
        "manifest_url": st.sampled_from(["http://h/m.json", "file:///etc/passwd", "https://x/",
                                         "http:// bad"]) | json_values,
        "signature": st.sampled_from([_GOOD_SIG, "", "====", "A" * 88]) | json_values,
        "issued_at": st.sampled_from(["2026-01-01T00:00:00Z", "yesterday"]) | json_values,
        "extra": json_values,
    })


def _rejected(fn, data) -> None:
    try:
        fn(data)
    except UpdateError as exc:
        assert str(exc)
        return
    # accepted: only well-formed commands may be
    obj = json.loads(data)
    assert obj["schema"].startswith("kiosk.")


@FUZZ
@given(st.binary(max_size=600))
def test_update_command_parser_never_crashes_on_bytes(data):
    _rejected(parse_update_command, data)
    _rejected(parse_rollback_command, data)


@FUZZ
@given(update_like)
def test_update_command_parser_on_near_valid_json(obj):
    _rejected(parse_update_command, json.dumps(obj).encode())
    _rejected(parse_rollback_command, json.dumps(obj).encode())


@FUZZ
@given(st.binary(max_size=2000), st.one_of(st.text(max_size=120), st.binary(max_size=100)))
def test_signature_check_rejects_unsigned_input(data, sig):
    try:
        verified_manifest(data, sig, _KEYS)
    except UpdateError as exc:
        assert str(exc)
    else:  # pragma: no cover - would need a forged Ed25519 signature
        raise AssertionError("an unsigned manifest was accepted")


def _signed(raw: bytes):
    return verified_manifest(raw, encode_signature(sign(_KEY, raw)), _KEYS)


@FUZZ
@given(st.dictionaries(st.sampled_from(sorted(Manifest.model_fields)), json_values, max_size=10)
       | json_values)
def test_signed_manifest_parser_rejects_garbage_with_a_reason(doc):
    raw = json.dumps(doc).encode()
    try:
        _signed(raw)
    except (UpdateError, BundleError) as exc:
        assert str(exc)


@FUZZ
@given(st.data())
def test_signed_manifest_with_mutated_fields(site_manifest, data):
    doc = json.loads(site_manifest)
    path = []
    node = doc
    while isinstance(node, (dict, list)) and node and data.draw(st.booleans(), "descend"):
        key = data.draw(st.sampled_from(sorted(node) if isinstance(node, dict)
                                        else list(range(len(node)))), "key")
        path.append(key)
        parent, node = node, node[key]
    if path:
        parent[path[-1]] = data.draw(json_values | st.sampled_from(
            ["../x", "/etc/passwd", "a\\b", "..", -1, 2**70, "x" * 5000]), "value")
    try:
        m, _ = _signed(json.dumps(doc).encode())
    except (UpdateError, BundleError) as exc:
        assert str(exc)
    else:  # a harmless mutation: what was accepted is still safe to act on
        assert all(check_artifact_name(a.name) == a.name for a in m.artifacts)
