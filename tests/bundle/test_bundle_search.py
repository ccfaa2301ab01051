"""The search layer on its own: exact top-k, item aggregation, and the
auto mode's on-device measurement."""

from __future__ import annotations

import numpy as np

from edge_runtime.search import VectorIndex, annoy_cosine, exact_topk
from models.indexing import build_annoy


def _clustered(n: int, dim: int = 32, per: int = 10, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n // per, dim))
    x = np.repeat(centres, per, axis=0) + 0.5 * rng.normal(size=(n // per * per, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_exact_topk_matches_a_full_sort():
    emb = _clustered(500)
    q = emb[:7] + 0.01
    ids, scores = exact_topk(emb, q, 10)
    ref = np.argsort(-(q @ emb.T), axis=1)[:, :10]
    assert (ids == ref).all()
    assert np.all(np.diff(scores, axis=1) <= 0)
    np.testing.assert_allclose(annoy_cosine(np.sqrt(2 - 2 * scores)), scores, atol=1e-5)


def test_items_are_ranked_by_their_best_vector_and_calibration_reports(tmp_path):
    emb = _clustered(3000)
    np.save(tmp_path / "embeddings.npy", emb)
    build_annoy(emb, 10, tmp_path / "index.ann")
    vec_item = np.arange(3000) // 10  # 300 items x 10 vectors, sorted
    idx = VectorIndex(tmp_path / "index.ann", tmp_path / "embeddings.npy", 32, vec_item, 300, 10)
    idx.check_consistency()
    q = emb[[5, 1234]]
    for mode in ("exact", "annoy", "annoy_rerank"):
        res = idx.search_items(q, 5, mode)
        assert [r[0][0] for r in res] == [0, 123]  # own item first
        assert all(len({i for i, _ in r}) == 5 for r in res)
    best = idx.item_scores_exact(q)
    assert np.isclose(best[0, 0], 1.0, atol=1e-5)
    assert np.isclose(best[1, 7], (emb[70:80] @ q[1]).max(), atol=1e-6)
    mode, report = idx.calibrate(n_queries=16)
    assert mode in ("exact", "annoy", "annoy_rerank")
    assert report["exact"]["recall"] == 1.0 and 0 <= report["annoy"]["recall"] <= 1
    assert mode == "exact" or report[mode]["recall"] >= 0.95
    idx.close()


def test_unsorted_vectors_aggregate_the_same(tmp_path):
    emb = _clustered(200)
    perm = np.random.default_rng(1).permutation(200)
    np.save(tmp_path / "e.npy", emb[perm])
    build_annoy(emb[perm], 5, tmp_path / "i.ann")
    idx = VectorIndex(tmp_path / "i.ann", tmp_path / "e.npy", 32, (np.arange(200) // 10)[perm], 20, 5)
    got = idx.item_scores_exact(emb[:3])
    want = np.stack([(emb[:3] @ emb[i * 10:(i + 1) * 10].T).max(axis=1) for i in range(20)], axis=1)
    np.testing.assert_allclose(got, want, atol=1e-6)
    idx.close()
