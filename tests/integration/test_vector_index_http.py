"""The VectorIndex contract and the server-only features over HTTP: aliases, scroll and batched upserts.

The index is `QdrantServerIndex.from_url` against the Qdrant stand-in (or the real server
named by ENDODOC_TEST_QDRANT_URL), so every request crosses the Qdrant REST API.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator

import numpy as np
import pytest
from qdrant_client import models

from tests.conftest import REPO_ROOT

# The contract tests and their gallery live beside the vector tests, which import them as top-level modules.
sys.path.insert(0, str(REPO_ROOT / "tests" / "vectors"))

from test_vector_index_contract import *  # noqa: E402,F403  (collects the whole contract suite here)
from vector_gallery import COLLECTION, DIM, Gallery, make_gallery  # noqa: E402

from services.vectors import VectorIndex, VectorPoint  # noqa: E402
from services.vectors.server import QdrantServerIndex, upsert_batches  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:Payload indexes have no effect:UserWarning")


@pytest.fixture(scope="module")
def http_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One Qdrant REST URL for this module: the stand-in, or ENDODOC_TEST_QDRANT_URL."""
    from tests.integration.conftest import qdrant_url

    yield from qdrant_url.__wrapped__(tmp_path_factory.mktemp("qdrant-http"))


@pytest.fixture
def index(http_url: str) -> Iterator[VectorIndex]:
    """An index over HTTP with no collections and no aliases left by an earlier test."""
    opened = QdrantServerIndex.from_url(http_url, api_key=None, timeout_s=10)
    client = opened._client
    for alias in client.get_aliases().aliases:
        client.update_collection_aliases(
            change_aliases_operations=[models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=alias.alias_name))]
        )
    for collection in client.get_collections().collections:
        client.delete_collection(collection.name)
    yield opened
    opened.close()


@pytest.fixture
def gallery() -> Gallery:
    return make_gallery()


@pytest.fixture
def filled_index(index: VectorIndex, gallery: Gallery) -> VectorIndex:
    index.ensure_collection(COLLECTION, DIM)
    index.upsert(COLLECTION, gallery.points)
    return index


def test_payload_indexes_created_with_tenant_key(index: QdrantServerIndex) -> None:
    index.ensure_collection(COLLECTION, DIM)

    schema = index._client.get_collection(COLLECTION).payload_schema

    assert set(schema) == {"site_id", "procedure_id", "label"}
    assert schema["site_id"].params.is_tenant is True


def test_iter_point_ids_pages_through_all(filled_index: QdrantServerIndex, gallery: Gallery) -> None:
    ids = list(filled_index.iter_point_ids(COLLECTION, page_size=50))

    assert sorted(ids) == sorted(point.id for point in gallery.points)


def test_switch_alias_moves_readers(filled_index: QdrantServerIndex, gallery: Gallery) -> None:
    other = "images__next-model"
    filled_index.ensure_collection(other, DIM)
    filled_index.upsert(other, gallery.points[:10])

    assert filled_index.switch_alias("images", COLLECTION) is None
    assert filled_index.count("images") == len(gallery.points)
    assert filled_index.switch_alias("images", other) == COLLECTION

    assert filled_index.alias_target("images") == other
    assert filled_index.count("images") == 10


def test_switch_alias_to_missing_collection_fails(index: QdrantServerIndex) -> None:
    from services.vectors import VectorIndexError

    with pytest.raises(VectorIndexError, match="images__missing"):
        index.switch_alias("images", "images__missing")


def test_upsert_splits_by_bytes_before_count() -> None:
    points = [models.PointStruct(id=i, vector=[0.5] * 512, payload={"label": "polyp"}) for i in range(10)]

    batches = list(upsert_batches(points, max_count=256, max_bytes=40_000))

    assert [len(batch) for batch in batches] == [3, 3, 3, 1]
    assert [point.id for batch in batches for point in batch] == list(range(10))


def test_upsert_splits_by_count() -> None:
    points = [models.PointStruct(id=i, vector=[0.5] * 4) for i in range(7)]

    assert [len(batch) for batch in upsert_batches(points, max_count=3, max_bytes=10**9)] == [3, 3, 1]


def test_oversized_point_goes_alone() -> None:
    points = [models.PointStruct(id=i, vector=[0.5] * 512) for i in range(2)]

    assert [len(batch) for batch in upsert_batches(points, max_count=10, max_bytes=100)] == [1, 1]


def test_large_upsert_over_http_keeps_every_point(index: QdrantServerIndex) -> None:
    rng = np.random.default_rng(3)
    dim = 512
    index.ensure_collection("images__wide", dim)
    points = [
        VectorPoint(id=uuid.uuid4(), vector=rng.normal(size=dim).astype(np.float32), payload={"label": "polyp"})
        for _ in range(700)
    ]

    index.upsert("images__wide", points)

    assert index.count("images__wide") == 700
