"""Behaviour of the qdrant-edge index beyond the shared contract: files on disk, locking, threads."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
import uuid
from pathlib import Path

import numpy as np
import pytest
from vector_gallery import COLLECTION, DIM, Gallery

from services.vectors import VectorIndexError, VectorPoint
from services.vectors.edge import EdgeVectorIndex


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "vectors"


def fill(root: Path, gallery: Gallery) -> None:
    """Store the gallery in COLLECTION under `root` and close the index."""
    index = EdgeVectorIndex(root)
    index.ensure_collection(COLLECTION, DIM)
    index.upsert(COLLECTION, gallery.points)
    index.close()


def test_edge_creates_shard_folder_and_dim_file(root: Path) -> None:
    index = EdgeVectorIndex(root)
    index.ensure_collection(COLLECTION, DIM)
    index.close()

    assert (root / COLLECTION).is_dir()
    assert json.loads((root / f"{COLLECTION}.json").read_text())["dim"] == DIM


def test_edge_reopen_keeps_points(root: Path, gallery: Gallery) -> None:
    fill(root, gallery)

    reopened = EdgeVectorIndex(root)
    try:
        assert reopened.count(COLLECTION) == len(gallery.points)
        hits = reopened.search(COLLECTION, gallery.points[9].vector, limit=1)
        assert hits[0].id == gallery.points[9].id
        assert dict(hits[0].payload) == dict(gallery.points[9].payload)
    finally:
        reopened.close()


def test_edge_reopen_allows_upsert_without_ensure(root: Path, gallery: Gallery) -> None:
    fill(root, gallery)

    reopened = EdgeVectorIndex(root)
    try:
        reopened.delete(COLLECTION, [gallery.points[0].id])
        reopened.upsert(COLLECTION, [gallery.points[0]])
        assert reopened.count(COLLECTION) == len(gallery.points)
    finally:
        reopened.close()


def test_edge_reopen_with_other_dim_names_both_dims(root: Path, gallery: Gallery) -> None:
    fill(root, gallery)

    reopened = EdgeVectorIndex(root)
    try:
        with pytest.raises(VectorIndexError) as raised:
            reopened.ensure_collection(COLLECTION, 64)
    finally:
        reopened.close()

    message = str(raised.value)
    assert COLLECTION in message
    assert f"dim {DIM}" in message
    assert "dim 64" in message
    assert "delete" in message


def test_edge_reopen_without_dim_file(root: Path, gallery: Gallery) -> None:
    fill(root, gallery)
    (root / f"{COLLECTION}.json").unlink()

    reopened = EdgeVectorIndex(root)
    try:
        with pytest.raises(VectorIndexError, match="call ensure_collection"):
            reopened.count(COLLECTION)
        with pytest.raises(VectorIndexError, match="expected vector size 64"):
            reopened.ensure_collection(COLLECTION, 64)
        reopened.ensure_collection(COLLECTION, DIM)
        assert reopened.count(COLLECTION) == len(gallery.points)
    finally:
        reopened.close()

    assert json.loads((root / f"{COLLECTION}.json").read_text())["dim"] == DIM


def test_edge_second_handle_on_same_folder_is_rejected(root: Path, gallery: Gallery) -> None:
    fill(root, gallery)
    first = EdgeVectorIndex(root)
    second = EdgeVectorIndex(root)
    try:
        assert first.count(COLLECTION) == len(gallery.points)
        with pytest.raises(VectorIndexError) as raised:
            second.count(COLLECTION)
    finally:
        first.close()

    message = str(raised.value)
    assert str(root / COLLECTION) in message
    assert "only one endodoc process" in message

    try:
        assert second.count(COLLECTION) == len(gallery.points)
    finally:
        second.close()


def test_edge_folder_held_by_other_process_is_rejected(root: Path, gallery: Gallery) -> None:
    fill(root, gallery)
    holder_script = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        from services.vectors.edge import EdgeVectorIndex

        index = EdgeVectorIndex(Path({str(root)!r}))
        index.count({COLLECTION!r})
        print("ready", flush=True)
        sys.stdin.readline()
        index.close()
        """
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", holder_script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        # structlog writes its events to stdout too, so skip lines until the marker.
        assert holder.stdout is not None
        for line in holder.stdout:
            if line.strip() == "ready":
                break
        else:
            pytest.fail("the process holding the shard exited before opening it")
        index = EdgeVectorIndex(root)
        with pytest.raises(VectorIndexError, match="only one endodoc process"):
            index.count(COLLECTION)
    finally:
        holder.communicate("\n", timeout=30)

    assert holder.returncode == 0
    index.close()


def test_edge_serves_searches_during_background_upsert(root: Path, gallery: Gallery) -> None:
    index = EdgeVectorIndex(root)
    index.ensure_collection(COLLECTION, DIM)
    index.upsert(COLLECTION, gallery.points[:20])
    errors: list[BaseException] = []

    def upsert_rest() -> None:
        try:
            for start in range(20, len(gallery.points), 10):
                index.upsert(COLLECTION, gallery.points[start : start + 10])
        except BaseException as error:
            errors.append(error)

    writer = threading.Thread(target=upsert_rest)
    writer.start()
    searches = 0
    while writer.is_alive() or searches < 20:
        hits = index.search(COLLECTION, gallery.points[0].vector, limit=5, where={"site_id": "a"})
        assert hits[0].id == gallery.points[0].id
        searches += 1
    writer.join()

    try:
        assert errors == []
        assert index.count(COLLECTION) == len(gallery.points)
    finally:
        index.close()


def test_edge_close_then_use_reopens_shard(root: Path, gallery: Gallery) -> None:
    index = EdgeVectorIndex(root)
    index.ensure_collection(COLLECTION, DIM)
    index.upsert(COLLECTION, gallery.points[:3])
    index.close()

    try:
        assert index.count(COLLECTION) == 3
    finally:
        index.close()


def test_edge_invalid_dim_file_is_reported(root: Path, gallery: Gallery) -> None:
    fill(root, gallery)
    (root / f"{COLLECTION}.json").write_text("{not json")

    index = EdgeVectorIndex(root)
    with pytest.raises(VectorIndexError, match="invalid collection dim file"):
        index.count(COLLECTION)
    index.close()


def test_edge_upsert_accepts_float64_vectors(root: Path) -> None:
    index = EdgeVectorIndex(root)
    try:
        index.ensure_collection(COLLECTION, 4)
        point_id = uuid.uuid4()
        index.upsert(COLLECTION, [VectorPoint(id=point_id, vector=np.array([3.0, 0.0, 4.0, 0.0]), payload={})])
        [stored] = index.retrieve(COLLECTION, [point_id])
        np.testing.assert_allclose(stored.vector, [0.6, 0.0, 0.8, 0.0], atol=1e-6)
    finally:
        index.close()


def clustered_points(count: int, dim: int, seed: int = 11) -> list[VectorPoint]:
    """Build `count` points around 20 centres, each on site `a` or `b` at random."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(20, dim))
    points = []
    for i in range(count):
        vector = centres[i % len(centres)] + 0.3 * rng.normal(size=dim)
        payload = {"site_id": str(rng.choice(["a", "b"])), "label": f"cluster-{i % len(centres)}"}
        points.append(VectorPoint(id=uuid.UUID(int=i + 1), vector=vector.astype(np.float32), payload=payload))
    return points


def graph_index(root: Path, **options: int) -> EdgeVectorIndex:
    """Open an index whose optimizer builds HNSW graphs for small segments and whose searches use them."""
    return EdgeVectorIndex(root, indexing_threshold_kb=10, full_scan_threshold_kb=1, **options)


def test_edge_optimize_keeps_nearest_neighbours(root: Path) -> None:
    points = clustered_points(2000, DIM)
    # Queries near stored points, as real queries are: HNSW is approximate, and far from
    # every cluster its top 10 may differ from the exact one.
    noise = 0.3 * np.random.default_rng(5).normal(size=(20, DIM))
    queries = (np.stack([point.vector for point in points[:20]]) + noise).astype(np.float32)
    index = graph_index(root, optimize_after_unindexed_points=1_000_000, hnsw_ef=256)
    try:
        index.ensure_collection(COLLECTION, DIM)
        index.upsert(COLLECTION, points)

        def neighbours(where: dict[str, str] | None) -> list[list[uuid.UUID]]:
            return [[hit.id for hit in index.search(COLLECTION, query, 10, where)] for query in queries]

        before = neighbours(None)
        before_filtered = neighbours({"site_id": "a"})
        assert index.optimize(COLLECTION) is True
        after = neighbours(None)
        after_filtered = neighbours({"site_id": "a"})

        assert after == before
        # The HNSW build is multi-threaded and not deterministic, and a filtered graph walk
        # can miss a neighbour now and then, so filtered results are compared by overlap.
        overlaps = [len(set(got) & set(expected)) / 10 for got, expected in zip(after_filtered, before_filtered)]
        assert np.mean(overlaps) >= 0.98
        assert min(overlaps) >= 0.8
        assert index.count(COLLECTION) == len(points)
    finally:
        index.close()


def test_edge_large_upsert_runs_optimizer(root: Path) -> None:
    index = graph_index(root, optimize_after_unindexed_points=500)
    try:
        index.ensure_collection(COLLECTION, DIM)
        index.upsert(COLLECTION, clustered_points(2000, DIM))

        assert index.optimize(COLLECTION) is False
    finally:
        index.close()


def test_edge_small_upsert_leaves_optimizer_to_caller(root: Path) -> None:
    index = graph_index(root, optimize_after_unindexed_points=5000)
    try:
        index.ensure_collection(COLLECTION, DIM)
        index.upsert(COLLECTION, clustered_points(2000, DIM))

        assert index.optimize(COLLECTION) is True
    finally:
        index.close()


@pytest.mark.parametrize("option", ["hnsw_ef", "optimize_after_unindexed_points", "indexing_threshold_kb"])
def test_edge_rejects_non_positive_option(root: Path, option: str) -> None:
    with pytest.raises(ValueError, match=f"invalid {option} 0"):
        EdgeVectorIndex(root, **{option: 0})
