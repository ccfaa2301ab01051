"""Pure retrieval metrics against hand-computed tables."""

from __future__ import annotations

import numpy as np
import pytest

from trainer.retrieval_metrics import (
    cluster_purity,
    mean_average_precision,
    nn_vote,
    ranked_items,
    recall_at_k,
    top_k_accuracy,
)

# 2 queries x 4 gallery images; gallery items a, a, b, c
SIM = np.array([[0.9, 0.1, 0.8, 0.2],
                [0.3, 0.2, 0.9, 0.95]])
GAL = np.array(["a", "a", "b", "c"], dtype=object)


@pytest.mark.parametrize("queries,k,expected", [
    (["a", "c"], 1, 1.0),    # q0 -> a, q1 -> c: both right
    (["a", "b"], 1, 0.5),
    (["a", "b"], 2, 1.0),
    (["b", "a"], 1, 0.0),
    (["b", "a"], 3, 1.0),
])
def test_top_k_by_item(queries, k, expected):
    q = np.array(queries, dtype=object)
    assert top_k_accuracy(SIM, q, GAL, k) == pytest.approx(expected)


@pytest.mark.parametrize("k,expected", [(1, 0.5), (2, 0.5), (3, 1.0), (4, 1.0)])
def test_recall_at_k_by_image(k, expected):
    # q0 = "a": ranks 0(a) -> hit at 1; q1 = "a": order c, b, a, a -> first a at rank 3
    q = np.array(["a", "a"], dtype=object)
    assert recall_at_k(SIM, q, GAL, k) == pytest.approx(expected)


def test_ranked_items_counts_each_item_once():
    items = ranked_items(SIM, GAL, 3)
    assert items.tolist() == [["a", "b", "c"], ["c", "b", "a"]]


@pytest.mark.parametrize("queries,expected", [
    # q0=a: order 0(a),2(b),3(c),1(a): AP = (1/1 + 2/4)/2 = 0.75
    # q1=b: order 3(c),2(b),...: AP = 1/2
    (["a", "b"], (0.75 + 0.5) / 2),
    # q1=a: order 3,2,0,1 -> a at ranks 3,4: AP = (1/3 + 2/4)/2
    (["a", "a"], (0.75 + (1 / 3 + 0.5) / 2) / 2),
    # q1=z has no gallery image and is left out
    (["a", "z"], 0.75),
])
def test_mean_average_precision(queries, expected):
    assert mean_average_precision(SIM, np.array(queries, dtype=object), GAL) == pytest.approx(expected)


@pytest.mark.parametrize("row,k,winner,score", [
    ([0.9, 0.1, 0.8, 0.2], 1, "a", 0.9),
    ([0.5, 0.5, 0.9, 0.0], 3, "a", 0.5),   # two a votes (1.0) beat one b (0.9)
    ([0.5, 0.5, 0.9, 0.0], 1, "b", 0.9),
])
def test_nn_vote(row, k, winner, score):
    w, s = nn_vote(np.array(row), GAL, k)
    assert (w, s) == (winner, pytest.approx(score))


@pytest.mark.parametrize("labels,clusters,expected", [
    ([0, 0, 1, 1], [5, 5, 6, 6], 1.0),
    ([0, 0, 1, 1], [5, 5, 5, 5], 0.5),
    ([0, 1, 1, 2, 2, 2], [0, 0, 1, 1, 2, 2], 4 / 6),
])
def test_cluster_purity(labels, clusters, expected):
    assert cluster_purity(np.array(labels), np.array(clusters)) == pytest.approx(expected)
