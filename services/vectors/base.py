"""The vector index interface shared by the embedded and the server backends."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

# A payload filter: every key must match; a list value matches any of its items.
PayloadFilter = Mapping[str, str | Sequence[str]]

# Payload keys carried by every point; `site_id` is the tenant key.
PAYLOAD_KEYS = ("site_id", "procedure_id", "image_id", "label")


@dataclass(frozen=True)
class VectorPoint:
    """One embedding with its point id (the image UUID) and keyword payload."""

    id: uuid.UUID
    vector: np.ndarray
    payload: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class VectorHit:
    """One search result: point id, cosine similarity and payload."""

    id: uuid.UUID
    score: float
    payload: Mapping[str, str]


class VectorIndexError(RuntimeError):
    """A vector store operation failed; the message names the collection and the fix."""


class VectorIndex(Protocol):
    """Cosine-similarity collections of fixed-dimension vectors with keyword payloads."""

    def ensure_collection(self, name: str, dim: int) -> None:
        """Create the collection and its payload indexes unless it exists; reject a different dim."""
        ...

    def upsert(self, collection: str, points: Sequence[VectorPoint]) -> None:
        """Insert or replace points by id; an existing id keeps one point."""
        ...

    def search(
        self, collection: str, vector: np.ndarray, limit: int, where: PayloadFilter | None = None
    ) -> list[VectorHit]:
        """Return up to `limit` nearest points, best first, among those matching `where`."""
        ...

    def search_batch(
        self, collection: str, vectors: np.ndarray, limit: int, where: PayloadFilter | None = None
    ) -> list[list[VectorHit]]:
        """Run `search` for each row of `vectors`."""
        ...

    def retrieve(self, collection: str, ids: Sequence[uuid.UUID]) -> list[VectorPoint]:
        """Return the stored points among `ids`, with vectors; unknown ids are skipped."""
        ...

    def count(self, collection: str, where: PayloadFilter | None = None) -> int:
        """Return the number of points matching `where` (all points when None)."""
        ...

    def delete(self, collection: str, ids: Sequence[uuid.UUID]) -> None:
        """Delete points by id; unknown ids are ignored."""
        ...

    def close(self) -> None:
        """Flush and release the store."""
        ...


def collection_name(kind: str, model_version: str) -> str:
    """Return the collection of `kind` (`images` or `references`) for one embedding space."""
    if kind not in ("images", "references"):
        raise ValueError(f"unknown collection kind {kind!r}: expected 'images' or 'references'")
    return f"{kind}__{model_version}"
