"""Choice of vector index backend from the settings."""

from __future__ import annotations

from pathlib import Path

import pytest
from vector_gallery import COLLECTION, DIM

from services.settings import Settings
from services.vectors import VectorIndexError, open_vector_index
from services.vectors.edge import EdgeVectorIndex
from services.vectors.server import QdrantServerIndex


def test_open_without_url_uses_edge_in_vector_dir(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, qdrant_url=None)

    index = open_vector_index(settings)
    index.ensure_collection(COLLECTION, DIM)
    index.close()

    assert isinstance(index, EdgeVectorIndex)
    assert (settings.vector_dir / COLLECTION).is_dir()


def test_open_with_url_uses_server(tmp_path: Path) -> None:
    url = "http://127.0.0.1:1"
    settings = Settings(data_dir=tmp_path, qdrant_url=url, qdrant_timeout_s=1.0)

    index = open_vector_index(settings)

    assert isinstance(index, QdrantServerIndex)
    with pytest.raises(VectorIndexError, match=url):
        index.count(COLLECTION)
    index.close()
    assert not settings.vector_dir.exists()
