"""Matching through the one Matcher code path: round trip, modes, the
`match --json` contract, and no torch on the device side."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge_runtime.matcher import Match, Matcher
from models.catalogue import load_catalogue
from models.errors import BundleError
from models.images import read_image
from models.preprocess import PreprocessSpec

REPO = Path(__file__).resolve().parents[2]


def run_cli(*args: str, code: str = "from edge_runtime.cli import main; sys.exit(main())"
            ) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-c", f"import sys; {code}", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("mode", ["exact", "annoy", "annoy_rerank"])
def test_each_catalogue_photo_finds_its_own_item(tiny_bundle, tiny_catalogue, mode):
    entries = load_catalogue(tiny_catalogue).entries
    with Matcher.open(tiny_bundle, search_mode=mode) as m:
        assert m.search_mode == mode and m.self_test() == []
        results = m.match_images([read_image(e.path) for e in entries], top_k=3)
    for e, matches in zip(entries, results, strict=True):
        assert [x.rank for x in matches] == [1, 2, 3]
        assert matches[0].item_id == e.item_id and matches[0].score > 0.9999  # itself, cos ~1
        assert matches[0].name == e.item_id.rsplit("/", 1)[-1]
        assert len({x.item_id for x in matches}) == 3  # items, not vectors
        assert matches[0].score >= matches[1].score >= matches[2].score


def test_search_returns_top_k_items_and_annoy_scores_are_cosines(tiny_bundle):
    with Matcher.open(tiny_bundle, search_mode="annoy") as m:
        emb = np.load(tiny_bundle / "embeddings.npy")
        got = m.search(emb[:2], top_k=10)
        assert [len(r) for r in got] == [4, 4]  # only 4 items exist
        assert isinstance(got[0][0], Match)
        exact = m.index.item_scores_exact(emb[:2])
        for b, row in enumerate(got):
            for x in row:
                item = [i for i, (iid, _) in enumerate(m.items) if iid == x.item_id][0]
                assert abs(x.score - exact[b, item]) < 1e-4  # cos = 1 - d^2/2


def test_an_injected_encoder_must_fit_the_manifest(tiny_bundle):
    from edge_runtime.encoders.onnx_backend import OnnxEncoder

    with pytest.raises(BundleError, match="encoder.onnx"):
        OnnxEncoder(tiny_bundle / "encoder.onnx", PreprocessSpec(size=64), 32)
    with pytest.raises(BundleError, match="manifest says"):
        OnnxEncoder(tiny_bundle / "encoder.onnx", PreprocessSpec(size=32), 16)


def test_match_json_contract_threshold_bad_image_and_no_torch(tiny_bundle, tiny_catalogue,
                                                              tmp_path):
    good = sorted(tiny_catalogue.rglob("*.jpg"))[:2]
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    code = ("import json; from edge_runtime.cli import main; rc = main(); "
            "print(json.dumps({'torch': 'torch' in sys.modules}), file=sys.stderr); sys.exit(rc)")
    r = run_cli("match", str(tiny_bundle), str(good[0]), str(bad), str(good[1]), "--json",
                "--top-k", "3", "--threshold", "0.99999", code=code)
    assert r.returncode == 1, r.stderr  # one unreadable image: reported, others matched
    assert "bad.jpg" in r.stderr and "Traceback" not in r.stderr
    assert json.loads(r.stderr.strip().splitlines()[-1]) == {"torch": False}
    lines = [json.loads(s) for s in r.stdout.splitlines()]
    assert [d["image"] for d in lines] == [str(good[0]), str(good[1])]
    for d, path in zip(lines, good, strict=True):
        assert set(d) == {"image", "matches"}
        # Only the photo itself reaches cos >= 0.99999.
        assert len(d["matches"]) == 1
        (mm,) = d["matches"]
        assert set(mm) == {"item_id", "name", "score", "rank"} and mm["rank"] == 1
        assert mm["item_id"] == path.parent.relative_to(tiny_catalogue).as_posix()
        assert isinstance(mm["score"], float) and mm["score"] >= 0.99999

    r = run_cli("match", str(tiny_bundle), str(good[0]), "--json", "--top-k", "2",
                "--threshold", "-1")
    assert r.returncode == 0
    assert [m["rank"] for m in json.loads(r.stdout)["matches"]] == [1, 2]
    import cv2

    noise = tmp_path / "noise.png"
    cv2.imwrite(str(noise), np.random.default_rng(0).integers(0, 256, (64, 80, 3), dtype=np.uint8))
    r = run_cli("match", str(tiny_bundle), str(noise), "--threshold", "0.99", "--mode", "annoy")
    assert r.returncode == 0 and "noise.png: no match (best " in r.stdout
    r = run_cli("match", str(tiny_bundle), str(noise), "--threshold", "0.99", "--json")
    assert json.loads(r.stdout) == {"image": str(noise), "matches": []}
