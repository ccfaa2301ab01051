"""Retrieval metrics as pure numpy functions (no torch), tested with tables.

Conventions: ``sim`` is a (queries, gallery) similarity matrix (higher =
closer; cosine for L2-normalised embeddings); labels are any hashable-free
numpy arrays of item ids (ints or strings). "By item" means a query is right
when the item of its nearest gallery image equals its own item.
"""

from __future__ import annotations

import numpy as np

__all__ = ["ranked_items", "top_k_accuracy", "recall_at_k", "mean_average_precision",
           "nn_vote", "cluster_purity", "retrieval_report"]


def ranked_items(sim: np.ndarray, gallery_labels: np.ndarray, k: int) -> np.ndarray:
    """For each query, the first ``k`` distinct gallery items ranked by their
    best-matching image (an item counts once, at its best rank). Missing
    positions (fewer than k items) are filled with the first item."""
    order = np.argsort(-sim, axis=1, kind="stable")
    out = []
    for row in order:
        labs = gallery_labels[row]
        _, first = np.unique(labs, return_index=True)
        items = labs[np.sort(first)][:k]
        if len(items) < k:
            items = np.concatenate([items, np.repeat(items[:1], k - len(items))])
        out.append(items)
    return np.array(out)


def top_k_accuracy(sim: np.ndarray, query_labels: np.ndarray, gallery_labels: np.ndarray,
                   k: int = 1) -> float:
    """Fraction of queries whose item is among the top-k distinct gallery items."""
    if len(query_labels) == 0:
        return float("nan")
    items = ranked_items(sim, gallery_labels, k)
    return float(np.mean([q in row for q, row in zip(query_labels, items, strict=False)]))


def recall_at_k(sim: np.ndarray, query_labels: np.ndarray, gallery_labels: np.ndarray,
                k: int = 1) -> float:
    """Image-level recall@k (as in deep metric learning papers): a query counts
    when any of its k nearest gallery images has its item."""
    if len(query_labels) == 0:
        return float("nan")
    order = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    return float(np.mean((gallery_labels[order] == query_labels[:, None]).any(axis=1)))


def mean_average_precision(sim: np.ndarray, query_labels: np.ndarray,
                           gallery_labels: np.ndarray) -> float:
    """Mean over queries of average precision of the full gallery ranking;
    queries whose item has no gallery image are left out."""
    order = np.argsort(-sim, axis=1, kind="stable")
    aps = []
    for q, row in zip(query_labels, order, strict=False):
        rel = gallery_labels[row] == q
        n = int(rel.sum())
        if n == 0:
            continue
        hits = np.cumsum(rel)
        aps.append(float((hits[rel] / (np.flatnonzero(rel) + 1)).sum() / n))
    return float(np.mean(aps)) if aps else float("nan")


def nn_vote(sim_row: np.ndarray, gallery_labels: np.ndarray, k: int = 5) -> tuple[object, float]:
    """Label one query by its k nearest gallery images: each votes with its
    similarity; returns (winning item, best similarity of that item)."""
    order = np.argsort(-sim_row, kind="stable")[:k]
    votes: dict[object, float] = {}
    best: dict[object, float] = {}
    for i in order:
        lab = gallery_labels[i].item() if hasattr(gallery_labels[i], "item") else gallery_labels[i]
        votes[lab] = votes.get(lab, 0.0) + max(float(sim_row[i]), 0.0)
        best[lab] = max(best.get(lab, -1.0), float(sim_row[i]))
    winner = max(votes, key=lambda lab: (votes[lab], best[lab]))
    return winner, best[winner]


def cluster_purity(true_labels: np.ndarray, clusters: np.ndarray) -> float:
    """Share of images that belong to their cluster's majority item."""
    if len(true_labels) == 0:
        return float("nan")
    total = 0
    for c in np.unique(clusters):
        _, counts = np.unique(true_labels[clusters == c], return_counts=True)
        total += int(counts.max())
    return total / len(true_labels)


def retrieval_report(sim: np.ndarray, query_labels: np.ndarray, gallery_labels: np.ndarray,
                     ks: tuple[int, ...] = (1, 5)) -> dict[str, float]:
    """The standard figures in one dict: top-k by item, recall@k by image, mAP."""
    out: dict[str, float] = {"queries": float(len(query_labels)), "gallery": float(len(gallery_labels))}
    for k in ks:
        out[f"top{k}"] = top_k_accuracy(sim, query_labels, gallery_labels, k)
        out[f"recall@{k}"] = recall_at_k(sim, query_labels, gallery_labels, k)
    out["mAP"] = mean_average_precision(sim, query_labels, gallery_labels)
    return out
