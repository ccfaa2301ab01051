from __future__ import annotations

import json

import pytest

from models.bundle import Artifact, check_artifact_name, parse_manifest
from models.errors import BundleError
from models.preprocess import PreprocessSpec

SHA_A, SHA_B, SHA_C = "a" * 64, "b" * 64, "c" * 64


def manifest_dict(**over):
    spec = PreprocessSpec().model_dump(mode="json")
    m = {
        "bundle_version": 1, "created": "2026-11-29T00:00:00Z", "embedding_size": 16, "input": spec,
        "item_count": 2,
        "encoder": {"sha256": SHA_A, "run_id": "r1"},
        "index": {"sha256": SHA_B, "dim": 16, "n_vectors": 4, "n_trees": 10, "encoder_sha256": SHA_A},
        "compatibility": {"embedding_size": 16, "input": spec},
        "artifacts": [
            {"name": "encoder.onnx", "size": 10, "sha256": SHA_A, "kind": "encoder"},
            {"name": "index.ann", "size": 10, "sha256": SHA_B, "kind": "index"},
            {"name": "embeddings.npy", "size": 10, "sha256": SHA_C, "kind": "embeddings"},
            {"name": "items.json", "size": 10, "sha256": SHA_C, "kind": "items"},
        ],
    }
    m.update(over)
    return m


def test_valid_manifest_parses():
    m = parse_manifest(json.dumps(manifest_dict()).encode())
    assert m.artifact("index.ann").sha256 == SHA_B and not m.is_expired()


@pytest.mark.parametrize("name", ["../x", "a/b", "/etc/passwd", "a\\b", "..", "", ".hidden", "manifest.json",
                                  "x\x00y"])
def test_artifact_names_must_be_plain(name):
    with pytest.raises(ValueError):
        check_artifact_name(name)
    with pytest.raises(ValueError):
        Artifact(name=name, size=1, sha256=SHA_A, kind="other")


@pytest.mark.parametrize("change,msg", [
    ({"index": {"sha256": SHA_B, "dim": 16, "n_vectors": 4, "n_trees": 10, "encoder_sha256": SHA_C}},
     "another encoder"),
    ({"embedding_size": 32}, "embedding size"),
    ({"expires": "tomorrow"}, "expires"),
    ({"surprise": 1}, "surprise"),
    ({"format_version": 2}, "format_version"),
])
def test_inconsistent_manifests_are_refused_with_the_reason(change, msg):
    with pytest.raises(BundleError, match=msg):
        parse_manifest(json.dumps(manifest_dict(**change)).encode())


def test_garbage_is_one_bundle_error():
    for data in (b"", b"{", b"[]", b"\xff\xfe", b"null"):
        with pytest.raises(BundleError):
            parse_manifest(data)


def test_expiry():
    m = parse_manifest(json.dumps(manifest_dict(expires="2000-01-01T00:00:00Z")).encode())
    assert m.is_expired()
