"""The vector index: qdrant-edge in process for the embedded deployment, a Qdrant server in production."""

from __future__ import annotations

from typing import TYPE_CHECKING

from services.vectors.base import (
    PAYLOAD_KEYS,
    PayloadFilter,
    VectorHit,
    VectorIndex,
    VectorIndexError,
    VectorPoint,
    collection_name,
)

if TYPE_CHECKING:
    from services.settings import Settings

__all__ = [
    "PAYLOAD_KEYS",
    "PayloadFilter",
    "VectorHit",
    "VectorIndex",
    "VectorIndexError",
    "VectorPoint",
    "collection_name",
    "open_vector_index",
]


def open_vector_index(settings: Settings) -> VectorIndex:
    """Open qdrant-edge in `settings.vector_dir` when no Qdrant URL is set, else the Qdrant server.

    Neither backend contacts a server or opens a shard until its first call.
    """
    # Each backend is imported only when chosen, so the embedded deployment never loads qdrant-client.
    if settings.qdrant_url is None:
        from services.vectors.edge import EdgeVectorIndex

        return EdgeVectorIndex(settings.vector_dir)

    from services.vectors.server import QdrantServerIndex

    return QdrantServerIndex.from_url(settings.qdrant_url, settings.qdrant_api_key, settings.qdrant_timeout_s)
