"""Retrieval metrics of query embeddings against a labeled gallery."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class RetrievalMetrics:
    """Recall@K (a same-class image among the top K) and mAP over the full gallery ranking."""

    recall_at: dict[int, float]
    mean_average_precision: float
    queries: int


def retrieval_metrics(
    queries: np.ndarray,
    query_labels: Sequence[str],
    gallery: np.ndarray,
    gallery_labels: Sequence[str],
    ks: Sequence[int] = (1, 5, 10),
) -> RetrievalMetrics:
    """Rank the whole gallery by cosine similarity for each query and score the ranking.

    Both embedding matrices must have L2-normalised rows. Queries whose class has no gallery
    image are left out of mAP, since their average precision is undefined.
    """
    if len(queries) != len(query_labels) or len(gallery) != len(gallery_labels):
        raise ValueError("each embedding row needs exactly one label")
    if len(queries) == 0 or len(gallery) == 0:
        raise ValueError("retrieval metrics need at least one query and one gallery image")

    similarity = queries.astype(np.float32) @ gallery.astype(np.float32).T
    # A stable sort keeps ties in gallery order, so the metrics are deterministic.
    order = np.argsort(-similarity, axis=1, kind="stable")
    gallery_array = np.asarray(gallery_labels)
    relevant = gallery_array[order] == np.asarray(query_labels)[:, None]

    recall_at = {k: float(relevant[:, :k].any(axis=1).mean()) for k in ks}

    positives = relevant.sum(axis=1)
    ranks = np.arange(1, relevant.shape[1] + 1)
    precision_at_hits = np.cumsum(relevant, axis=1) / ranks
    with np.errstate(invalid="ignore", divide="ignore"):
        average_precision = (precision_at_hits * relevant).sum(axis=1) / positives
    scored = positives > 0
    mean_ap = float(average_precision[scored].mean()) if scored.any() else 0.0
    return RetrievalMetrics(recall_at=recall_at, mean_average_precision=mean_ap, queries=len(queries))
