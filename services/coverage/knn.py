"""Label an image by a weighted vote of its nearest reference images."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from services.vectors import VectorHit


@dataclass(frozen=True)
class Evidence:
    """A reference image that voted for the winning label, with its cosine similarity."""

    reference_id: str
    label: str
    similarity: float

    def as_dict(self) -> dict[str, str | float]:
        return {"reference_id": self.reference_id, "label": self.label, "similarity": round(self.similarity, 6)}


@dataclass(frozen=True)
class LabelVote:
    """The winning label, its share of the vote weight (0 to 1) and the evidence for it."""

    label: str
    score: float
    evidence: tuple[Evidence, ...]


def vote(hits: Sequence[VectorHit], temperature: float, evidence_count: int) -> LabelVote | None:
    """Weight each neighbour by softmax(similarity / temperature) and return the heaviest label.

    Returns None when there are no neighbours (an empty reference gallery).
    """
    if not hits:
        return None
    best_similarity = max(hit.score for hit in hits)
    # Subtracting the best similarity keeps exp() in range; the shares are unchanged.
    weights = [math.exp((hit.score - best_similarity) / temperature) for hit in hits]
    total = sum(weights)
    per_label: dict[str, float] = {}
    for hit, weight in zip(hits, weights, strict=True):
        label = hit.payload["label"]
        per_label[label] = per_label.get(label, 0.0) + weight
    label = max(per_label, key=lambda name: (per_label[name], name))
    evidence = tuple(
        Evidence(reference_id=str(hit.id), label=label, similarity=hit.score)
        for hit in hits
        if hit.payload["label"] == label
    )[:evidence_count]
    return LabelVote(label=label, score=per_label[label] / total, evidence=evidence)
