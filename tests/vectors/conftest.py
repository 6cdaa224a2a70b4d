"""Fixtures for the vector index tests: both backends and a small clustered gallery."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from vector_gallery import COLLECTION, DIM, Gallery, make_gallery, open_backend

from services.vectors import VectorIndex


@pytest.fixture
def gallery() -> Gallery:
    return make_gallery()


@pytest.fixture(params=["edge", "qdrant-local"])
def index(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[VectorIndex]:
    """An empty index on qdrant-edge, or on qdrant-client's local mode standing in for a server."""
    opened = open_backend(request.param, tmp_path)
    yield opened
    opened.close()


@pytest.fixture
def filled_index(index: VectorIndex, gallery: Gallery) -> VectorIndex:
    """The index with collection COLLECTION holding the whole gallery."""
    index.ensure_collection(COLLECTION, DIM)
    index.upsert(COLLECTION, gallery.points)
    return index
