"""Every way a bundle can be wrong is one clear error naming the file, from
the real CLI in a subprocess (a crash would show as a signal exit code)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from test_bundle_match import run_cli

from models.bundle import MANIFEST, artifact_for, read_manifest, write_manifest


def reseal(bundle: Path, **manifest_changes) -> None:
    """Recompute every artifact entry (as an attacker or a buggy tool would),
    so only the deeper checks can catch what changed."""
    m = read_manifest(bundle)
    arts = tuple(artifact_for(bundle / a.name, a.kind) for a in m.artifacts)
    by = {a.name: a for a in arts}
    enc = m.encoder.model_copy(update={"sha256": by[m.encoder.file].sha256})
    idx = m.index.model_copy(update={"sha256": by[m.index.file].sha256,
                                     "encoder_sha256": enc.sha256})
    write_manifest(bundle, m.model_copy(update={"artifacts": arts, "encoder": enc, "index": idx,
                                                **manifest_changes}))


def flip_byte(bundle: Path) -> None:
    p = bundle / "encoder.onnx"
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0x01
    p.write_bytes(bytes(data))


def truncate_index(bundle: Path) -> None:
    p = bundle / "index.ann"
    p.write_bytes(p.read_bytes()[:-100])


def wrong_dimension_index(bundle: Path) -> None:
    from models.indexing import build_annoy

    vecs = np.random.default_rng(0).normal(size=(40, 16)).astype(np.float32)
    build_annoy(vecs, 3, bundle / "index.ann")
    reseal(bundle)


def another_encoders_index(bundle: Path, other: Path) -> None:
    for name in ("index.ann", "embeddings.npy"):
        shutil.copyfile(other / name, bundle / name)
    reseal(bundle)


def index_of_other_vectors(bundle: Path, other: Path) -> None:
    shutil.copyfile(other / "index.ann", bundle / "index.ann")  # same size, other contents
    reseal(bundle)


def manifest_says_other_encoder(bundle: Path) -> None:
    p = bundle / MANIFEST
    m = read_manifest(bundle)
    p.write_text(p.read_text().replace(f'"encoder_sha256": "{m.index.encoder_sha256}"',
                                       f'"encoder_sha256": "{"0" * 64}"'))


CASES = {
    "tampered file": (flip_byte, "encoder.onnx: sha256 does not match"),
    "missing file": (lambda b: (b / "items.json").unlink(), "items.json: missing"),
    "truncated index": (truncate_index, "index.ann: size"),
    "wrong-dimension index": (wrong_dimension_index, "index.ann"),
    "index from another encoder (hashes recomputed)": (another_encoders_index,
                                                       "index.ann: built by another encoder"),
    "index over other vectors (hashes recomputed)": (
        index_of_other_vectors, "index.ann: vector 0 differs from embeddings.npy"),
    "manifest: index from another encoder": (manifest_says_other_encoder,
                                             "index was built by another encoder"),
    "missing probe image": (lambda b: (b / "probe-000.jpg").unlink(), "probe-000.jpg: missing"),
}


@pytest.fixture(scope="module")
def other_bundle(tmp_path_factory, tiny_catalogue):
    """The same catalogue indexed by a differently seeded encoder."""
    from tiny_bundle import make_tiny_bundle

    return make_tiny_bundle(tmp_path_factory.mktemp("other"), tiny_catalogue, seed=1)


@pytest.mark.parametrize("case", list(CASES))
def test_bad_bundle_is_one_clear_error(case, tiny_bundle, tiny_catalogue, tmp_path, request):
    damage, expected = CASES[case]
    bundle = shutil.copytree(tiny_bundle, tmp_path / "bundle")
    if damage in (another_encoders_index, index_of_other_vectors):
        damage(bundle, request.getfixturevalue("other_bundle"))
    else:
        damage(bundle)
    image = next(tiny_catalogue.rglob("*.jpg"))
    r = run_cli("match", str(bundle), str(image), "--json")
    assert r.returncode == 2, (r.returncode, r.stderr)  # not a signal, not a traceback
    assert r.stdout == ""
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("edge-runtime match: error: "), r.stderr
    assert expected in err[0] and str(bundle) in err[0]
