"""The VectorIndex contract, run against qdrant-edge and against qdrant-client's local mode.

Local mode replaces a Qdrant server here. It shares the client API and the request models,
but it ignores payload indexes, so these tests check filter results, not index use.
"""

from __future__ import annotations

import uuid

import numpy as np
import pytest
from vector_gallery import COLLECTION, DIM, LABELS, Gallery

from services.vectors import VectorIndex, VectorIndexError, VectorPoint

pytestmark = pytest.mark.filterwarnings("ignore:Payload indexes have no effect:UserWarning")


def unit(vector: np.ndarray) -> np.ndarray:
    return vector / np.linalg.norm(vector)


def test_upsert_same_id_twice_keeps_one_point(index: VectorIndex) -> None:
    index.ensure_collection(COLLECTION, DIM)
    point_id = uuid.uuid4()
    first = VectorPoint(id=point_id, vector=np.ones(DIM, dtype=np.float32), payload={"label": "cecum"})
    second = VectorPoint(id=point_id, vector=np.arange(1, DIM + 1, dtype=np.float32), payload={"label": "ileum"})

    index.upsert(COLLECTION, [first])
    index.upsert(COLLECTION, [second])

    assert index.count(COLLECTION) == 1
    [stored] = index.retrieve(COLLECTION, [point_id])
    assert stored.payload == {"label": "ileum"}
    np.testing.assert_allclose(stored.vector, unit(second.vector), atol=1e-6)


def test_upsert_many_points_in_batches(filled_index: VectorIndex, gallery: Gallery) -> None:
    assert filled_index.count(COLLECTION) == len(gallery.points)


def test_search_returns_nearest_first_with_cosine_scores(filled_index: VectorIndex, gallery: Gallery) -> None:
    query_point = gallery.points[5]

    hits = filled_index.search(COLLECTION, query_point.vector, limit=10)

    expected = gallery.nearest(query_point.vector, 10)
    assert [hit.id for hit in hits] == [point_id for point_id, _ in expected]
    np.testing.assert_allclose([hit.score for hit in hits], [score for _, score in expected], atol=1e-5)
    assert hits[0].id == query_point.id
    assert hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert all(earlier.score >= later.score for earlier, later in zip(hits, hits[1:]))


def test_search_returns_payload_of_each_hit(filled_index: VectorIndex, gallery: Gallery) -> None:
    payloads = {point.id: dict(point.payload) for point in gallery.points}

    hits = filled_index.search(COLLECTION, gallery.points[0].vector, limit=5)

    assert len(hits) == 5
    for hit in hits:
        assert dict(hit.payload) == payloads[hit.id]


def test_search_finds_same_label_cluster(filled_index: VectorIndex, gallery: Gallery) -> None:
    query_point = gallery.points[2]

    hits = filled_index.search(COLLECTION, query_point.vector, limit=20)

    assert {hit.payload["label"] for hit in hits} == {query_point.payload["label"]}


def test_site_filter_never_returns_other_site(filled_index: VectorIndex, gallery: Gallery) -> None:
    site_a_count = len(gallery.matching(site_id="a"))

    for query_point in gallery.matching(site_id="b")[:10]:
        hits = filled_index.search(COLLECTION, query_point.vector, limit=len(gallery.points), where={"site_id": "a"})
        assert len(hits) == site_a_count
        assert {hit.payload["site_id"] for hit in hits} == {"a"}
        assert query_point.id not in {hit.id for hit in hits}


def test_site_filter_ranks_like_exact_search(filled_index: VectorIndex, gallery: Gallery) -> None:
    query = gallery.points[-1].vector

    hits = filled_index.search(COLLECTION, query, limit=15, where={"site_id": "a"})

    assert [hit.id for hit in hits] == [point_id for point_id, _ in gallery.nearest(query, 15, site_id="a")]


def test_list_filter_matches_any_value(filled_index: VectorIndex, gallery: Gallery) -> None:
    procedures = ["a-procedure-0", "b-procedure-2"]
    expected_ids = {point.id for point in gallery.matching(procedure_id=procedures)}

    hits = filled_index.search(
        COLLECTION, gallery.points[0].vector, limit=len(gallery.points), where={"procedure_id": procedures}
    )

    assert {hit.id for hit in hits} == expected_ids
    assert filled_index.count(COLLECTION, {"procedure_id": procedures}) == len(expected_ids)


def test_empty_list_filter_matches_nothing(filled_index: VectorIndex, gallery: Gallery) -> None:
    assert filled_index.search(COLLECTION, gallery.points[0].vector, limit=10, where={"label": []}) == []
    assert filled_index.count(COLLECTION, {"label": []}) == 0


def test_procedure_filter_returns_only_that_procedure(filled_index: VectorIndex, gallery: Gallery) -> None:
    where = {"site_id": "b", "procedure_id": "b-procedure-1"}
    query = gallery.matching(procedure_id="a-procedure-0")[0].vector

    hits = filled_index.search(COLLECTION, query, limit=100, where=where)

    assert len(hits) == len(gallery.matching(**where))
    assert {hit.payload["procedure_id"] for hit in hits} == {"b-procedure-1"}


def test_filter_across_sites_matches_nothing(filled_index: VectorIndex, gallery: Gallery) -> None:
    where = {"site_id": "a", "procedure_id": "b-procedure-1"}

    assert filled_index.search(COLLECTION, gallery.points[0].vector, limit=10, where=where) == []


def test_count_with_and_without_filter(filled_index: VectorIndex, gallery: Gallery) -> None:
    assert filled_index.count(COLLECTION) == len(gallery.points)
    assert filled_index.count(COLLECTION, None) == len(gallery.points)
    assert filled_index.count(COLLECTION, {"site_id": "a"}) == len(gallery.matching(site_id="a"))
    assert filled_index.count(COLLECTION, {"label": "cecum", "site_id": "b"}) == len(
        gallery.matching(label="cecum", site_id="b")
    )
    assert filled_index.count(COLLECTION, {"site_id": "unknown-site"}) == 0


def test_count_of_new_collection_is_zero(index: VectorIndex) -> None:
    index.ensure_collection(COLLECTION, DIM)

    assert index.count(COLLECTION) == 0


def test_retrieve_returns_unit_vectors_and_payloads(filled_index: VectorIndex, gallery: Gallery) -> None:
    expected_points = [gallery.points[3], gallery.points[100], gallery.points[7]]

    stored = filled_index.retrieve(COLLECTION, [point.id for point in expected_points])

    assert [point.id for point in stored] == [point.id for point in expected_points]
    for original, copy in zip(expected_points, stored):
        assert copy.vector.dtype == np.float32
        assert copy.vector.shape == (DIM,)
        np.testing.assert_allclose(copy.vector, unit(original.vector), atol=1e-6)
        assert dict(copy.payload) == dict(original.payload)


def test_retrieve_skips_unknown_ids(filled_index: VectorIndex, gallery: Gallery) -> None:
    known = gallery.points[0].id

    stored = filled_index.retrieve(COLLECTION, [uuid.uuid4(), known, uuid.uuid4()])

    assert [point.id for point in stored] == [known]
    assert filled_index.retrieve(COLLECTION, []) == []


def test_delete_removes_points(filled_index: VectorIndex, gallery: Gallery) -> None:
    removed = [point.id for point in gallery.points[:10]]

    filled_index.delete(COLLECTION, removed)

    assert filled_index.count(COLLECTION) == len(gallery.points) - 10
    assert filled_index.retrieve(COLLECTION, removed) == []
    hits = filled_index.search(COLLECTION, gallery.points[0].vector, limit=len(gallery.points))
    assert not set(removed) & {hit.id for hit in hits}


def test_delete_ignores_unknown_ids(filled_index: VectorIndex, gallery: Gallery) -> None:
    filled_index.delete(COLLECTION, [uuid.uuid4(), uuid.uuid4()])
    filled_index.delete(COLLECTION, [])

    assert filled_index.count(COLLECTION) == len(gallery.points)


def test_ensure_collection_twice_keeps_points(filled_index: VectorIndex, gallery: Gallery) -> None:
    filled_index.ensure_collection(COLLECTION, DIM)

    assert filled_index.count(COLLECTION) == len(gallery.points)


def test_collections_are_separate(filled_index: VectorIndex, gallery: Gallery) -> None:
    other = "references__test-model"
    filled_index.ensure_collection(other, DIM)
    filled_index.upsert(other, gallery.points[:5])

    assert filled_index.count(other) == 5
    assert filled_index.count(COLLECTION) == len(gallery.points)


def test_other_dim_error_names_both_dims(index: VectorIndex) -> None:
    index.ensure_collection(COLLECTION, DIM)

    with pytest.raises(VectorIndexError) as raised:
        index.ensure_collection(COLLECTION, DIM * 2)

    message = str(raised.value)
    assert COLLECTION in message
    assert f"dim {DIM}" in message
    assert f"dim {DIM * 2}" in message


def test_upsert_with_wrong_dim_names_collection(index: VectorIndex) -> None:
    index.ensure_collection(COLLECTION, DIM)
    point = VectorPoint(id=uuid.uuid4(), vector=np.ones(DIM + 1, dtype=np.float32), payload={})

    with pytest.raises(VectorIndexError) as raised:
        index.upsert(COLLECTION, [point])

    assert COLLECTION in str(raised.value)
    assert str(DIM) in str(raised.value)
    assert index.count(COLLECTION) == 0


def test_search_with_wrong_dim_names_collection(filled_index: VectorIndex) -> None:
    with pytest.raises(VectorIndexError, match=COLLECTION):
        filled_index.search(COLLECTION, np.ones(DIM - 1, dtype=np.float32), limit=3)

    with pytest.raises(VectorIndexError, match=COLLECTION):
        filled_index.search_batch(COLLECTION, np.ones((2, DIM - 1), dtype=np.float32), limit=3)


@pytest.mark.parametrize(
    "bad_value", [np.nan, np.inf], ids=["nan", "infinity"]
)
def test_non_finite_vector_is_rejected(index: VectorIndex, bad_value: float) -> None:
    index.ensure_collection(COLLECTION, DIM)
    vector = np.ones(DIM, dtype=np.float32)
    vector[3] = bad_value

    with pytest.raises(VectorIndexError, match="NaN or infinity"):
        index.upsert(COLLECTION, [VectorPoint(id=uuid.uuid4(), vector=vector, payload={})])
    with pytest.raises(VectorIndexError, match="NaN or infinity"):
        index.search(COLLECTION, vector, limit=3)


def test_zero_vector_is_rejected(index: VectorIndex) -> None:
    index.ensure_collection(COLLECTION, DIM)

    with pytest.raises(VectorIndexError, match="all zeros"):
        index.upsert(COLLECTION, [VectorPoint(id=uuid.uuid4(), vector=np.zeros(DIM), payload={})])


def test_non_string_payload_is_rejected(index: VectorIndex) -> None:
    index.ensure_collection(COLLECTION, DIM)
    point = VectorPoint(id=uuid.uuid4(), vector=np.ones(DIM), payload={"label": 3})  # type: ignore[dict-item]

    with pytest.raises(TypeError, match="label"):
        index.upsert(COLLECTION, [point])


def test_search_limit_below_one_is_rejected(filled_index: VectorIndex, gallery: Gallery) -> None:
    with pytest.raises(ValueError, match="limit"):
        filled_index.search(COLLECTION, gallery.points[0].vector, limit=0)


def test_unknown_collection_raises(index: VectorIndex) -> None:
    with pytest.raises(VectorIndexError, match="not found"):
        index.count("images__missing-model")

    with pytest.raises(VectorIndexError, match="images__missing-model"):
        index.search("images__missing-model", np.ones(DIM), limit=3)


@pytest.mark.parametrize("name", ["", "../escape", "a/b", ".hidden"])
def test_invalid_collection_name_is_rejected(index: VectorIndex, name: str) -> None:
    with pytest.raises(ValueError, match="invalid collection name"):
        index.ensure_collection(name, DIM)


def test_search_batch_equals_repeated_search(filled_index: VectorIndex, gallery: Gallery) -> None:
    queries = np.stack([gallery.points[i].vector for i in (0, 41, 90, 150, 239)])
    where = {"site_id": "a", "label": list(LABELS[:3])}

    batched = filled_index.search_batch(COLLECTION, queries, limit=7, where=where)

    single = [filled_index.search(COLLECTION, query, limit=7, where=where) for query in queries]
    assert len(batched) == len(queries)
    for batch_hits, single_hits in zip(batched, single):
        assert [hit.id for hit in batch_hits] == [hit.id for hit in single_hits]
        np.testing.assert_allclose(
            [hit.score for hit in batch_hits], [hit.score for hit in single_hits], atol=1e-6
        )


def test_search_batch_of_no_rows_returns_empty(filled_index: VectorIndex) -> None:
    assert filled_index.search_batch(COLLECTION, np.zeros((0, DIM), dtype=np.float32), limit=3) == []
