"""A small clustered gallery and backend openers shared by the vector index tests."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from qdrant_client import QdrantClient

from services.vectors import VectorIndex, VectorPoint
from services.vectors.edge import EdgeVectorIndex
from services.vectors.server import QdrantServerIndex

DIM = 32
COLLECTION = "images__test-model"
LABELS = ("cecum", "ileum", "pylorus", "z_line")
SITES = ("a", "b")
PROCEDURES_PER_SITE = 3
POINTS_PER_PROCEDURE = 40


@dataclass(frozen=True)
class Gallery:
    """Clustered test points: each label is a cluster, spread over sites and procedures."""

    points: list[VectorPoint]

    @property
    def vectors(self) -> np.ndarray:
        return np.stack([point.vector for point in self.points])

    def matching(self, **where: str | list[str]) -> list[VectorPoint]:
        """Return the points whose payload matches `where`, a list value meaning any of its items."""
        selected = []
        for point in self.points:
            if all(
                point.payload[key] in value if isinstance(value, list) else point.payload[key] == value
                for key, value in where.items()
            ):
                selected.append(point)
        return selected

    def nearest(self, query: np.ndarray, limit: int, **where: str | list[str]) -> list[tuple[uuid.UUID, float]]:
        """Return the exact top `limit` (id, cosine similarity) pairs among the matching points."""
        candidates = self.matching(**where)
        matrix = np.stack([point.vector for point in candidates]).astype(np.float64)
        matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
        unit_query = query.astype(np.float64) / np.linalg.norm(query)
        scores = matrix @ unit_query
        order = np.argsort(-scores)[:limit]
        return [(candidates[i].id, float(scores[i])) for i in order]


def make_gallery(seed: int = 7) -> Gallery:
    """Build 240 points of dim 32: one tight cluster per label, labels mixed within each procedure."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(len(LABELS), DIM))
    points = []
    for site in SITES:
        for procedure_number in range(PROCEDURES_PER_SITE):
            procedure_id = f"{site}-procedure-{procedure_number}"
            for i in range(POINTS_PER_PROCEDURE):
                label_index = i % len(LABELS)
                vector = centers[label_index] + 0.3 * rng.normal(size=DIM)
                point_id = uuid.UUID(bytes=rng.bytes(16), version=4)
                payload = {
                    "site_id": site,
                    "procedure_id": procedure_id,
                    "image_id": str(point_id),
                    "label": LABELS[label_index],
                }
                points.append(VectorPoint(id=point_id, vector=vector.astype(np.float32), payload=payload))
    return Gallery(points=points)


def open_backend(kind: str, directory: Path) -> VectorIndex:
    """Open a fresh index of `kind` (`edge` or `qdrant-local`) in `directory`."""
    if kind == "edge":
        return EdgeVectorIndex(directory / "edge")
    return QdrantServerIndex(QdrantClient(path=str(directory / "qdrant-local")))
