"""The embedded vector index: one qdrant-edge shard per collection, inside this process."""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import qdrant_edge as edge
import structlog

from services.vectors.base import PayloadFilter, VectorHit, VectorIndexError, VectorPoint
from services.vectors.validation import (
    as_matrix,
    as_vector,
    check_collection_name,
    check_dim,
    check_limit,
    check_point,
    filter_terms,
    points_in_order,
    unique_ids,
)

logger = structlog.get_logger(__name__)

KEYWORD_FIELDS = ("site_id", "procedure_id", "label")

# Points per update operation. The shard lock is released between batches so searches
# from other threads are not blocked for a whole large upsert.
UPSERT_BATCH_SIZE = 256

# HNSW graph of each shard, where m and ef_construct are Qdrant's defaults. A filtered
# search whose matching vectors are estimated below full_scan_threshold (in KB) scores
# them exactly through the payload index instead of walking the graph. At 512 dims
# (2 KB a vector) that covers a site of up to 5,000 points.
# NOTE: where the graph is used, filtered recall depends on the data: in a 2,000-point test
# whose filtered site had points in only half of the clusters, filtered recall@10 was 0.84.
HNSW_M = 16
HNSW_EF_CONSTRUCT = 100
HNSW_FULL_SCAN_THRESHOLD_KB = 10_000

# Segments with more vector data than this (in KB) get an HNSW index when the optimizer
# runs, and smaller ones are searched by brute force. Qdrant's default.
INDEXING_THRESHOLD_KB = 10_000

# Candidates kept while walking the HNSW graph in a search. It was chosen with
# bench/vector_search.py, and docs/benchmarks.md lists the recall and latency behind it.
SEARCH_HNSW_EF = 128

# An upsert that leaves more points than this outside the HNSW index runs the optimizer
# before it returns, so bulk loads end up indexed while small upserts stay fast.
OPTIMIZE_AFTER_UNINDEXED_POINTS = 20_000

# qdrant-edge 0.9.0 takes a lock on the shard's write-ahead log and reports a held lock
# with this OS error kind in its message.
_LOCKED_MARKER = "WouldBlock"


@dataclass
class _Shard:
    """One open shard with the vector dim of its collection and the lock that serialises its use."""

    shard: edge.EdgeShard
    dim: int
    path: Path
    lock: threading.Lock = field(default_factory=threading.Lock)
    closed: bool = False
    # Points left outside the HNSW index by the last optimizer run, which the optimizer
    # does not index while their segments are below its indexing threshold.
    unindexed_after_optimize: int = 0


class EdgeVectorIndex:
    """Vector collections stored as qdrant-edge shards in `root/<collection>`.

    The vector dim of each collection is kept in `root/<collection>.json`, because
    qdrant-edge 0.9.0 offers no call that returns the config of a loaded shard.
    Shards open on first use and stay open until `close()`. Every shard call holds that
    shard's lock, so one instance may be shared by request threads and a background
    upsert thread. qdrant-edge locks a shard folder to one open handle, so only one
    process (and one instance in it) may use `root` at a time.

    Upserted points are searched by brute force until the optimizer builds their HNSW
    index. `upsert` runs it once more than `optimize_after_unindexed_points` points wait,
    and bulk loaders may call `optimize` themselves after their last upsert.
    """

    def __init__(
        self,
        root: Path,
        *,
        hnsw_ef: int = SEARCH_HNSW_EF,
        optimize_after_unindexed_points: int = OPTIMIZE_AFTER_UNINDEXED_POINTS,
        indexing_threshold_kb: int = INDEXING_THRESHOLD_KB,
        full_scan_threshold_kb: int = HNSW_FULL_SCAN_THRESHOLD_KB,
    ) -> None:
        for name, value in (
            ("hnsw_ef", hnsw_ef),
            ("optimize_after_unindexed_points", optimize_after_unindexed_points),
            ("indexing_threshold_kb", indexing_threshold_kb),
            ("full_scan_threshold_kb", full_scan_threshold_kb),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"invalid {name} {value!r}: pass a positive integer")
        self._root = Path(root)
        self._hnsw_ef = hnsw_ef
        self._optimize_after_unindexed_points = optimize_after_unindexed_points
        self._indexing_threshold_kb = indexing_threshold_kb
        self._full_scan_threshold_kb = full_scan_threshold_kb
        self._shards: dict[str, _Shard] = {}
        # Guards `_shards` and the opening of shards.
        self._registry_lock = threading.Lock()

    def ensure_collection(self, name: str, dim: int) -> None:
        """Create the collection and its payload indexes unless it exists, and reject a different dim."""
        check_collection_name(name)
        check_dim(dim)
        self._get_shard(name, requested_dim=dim)

    def upsert(self, collection: str, points: Sequence[VectorPoint]) -> None:
        """Insert or replace points by id in batches, so an existing id keeps one point."""
        shard = self._get_shard(collection)
        edge_points = []
        for point in points:
            point_id, vector, payload = check_point(point, shard.dim, collection)
            edge_points.append(edge.Point(uuid.UUID(point_id), vector.tolist(), payload))

        for start in range(0, len(edge_points), UPSERT_BATCH_SIZE):
            batch = edge_points[start : start + UPSERT_BATCH_SIZE]
            with self._using(shard, collection, "upsert"):
                shard.shard.update(edge.UpdateOperation.upsert_points(batch))

        if edge_points and self._unindexed_points(shard, collection) - shard.unindexed_after_optimize > (
            self._optimize_after_unindexed_points
        ):
            self.optimize(collection)

    def optimize(self, collection: str) -> bool:
        """Build the HNSW index of unindexed points and merge small segments, blocking until done.

        Searches and upserts on this collection wait while it runs, which took 23 to 28 s for
        100,000 points of 512 dims on 2 cores (bench/vector_search.py). Returns whether
        anything was optimised.
        """
        shard = self._get_shard(collection)
        started = time.perf_counter()
        with self._using(shard, collection, "optimize"):
            changed = shard.shard.optimize()
            info = shard.shard.info()
        shard.unindexed_after_optimize = info.points_count - info.indexed_vectors_count
        logger.info(
            "vector_shard_optimized",
            collection=collection,
            changed=changed,
            points=info.points_count,
            indexed_vectors=info.indexed_vectors_count,
            segments=info.segments_count,
            duration_s=round(time.perf_counter() - started, 3),
        )
        return changed

    def search(
        self, collection: str, vector: np.ndarray, limit: int, where: PayloadFilter | None = None
    ) -> list[VectorHit]:
        """Return up to `limit` nearest points, best first, among those matching `where`."""
        shard = self._get_shard(collection)
        query = as_vector(vector, shard.dim, collection)
        check_limit(limit)
        request = _query_request(query, limit, where, self._hnsw_ef)
        with self._using(shard, collection, "search"):
            scored = shard.shard.query(request)
        return [_hit(point) for point in scored]

    def search_batch(
        self, collection: str, vectors: np.ndarray, limit: int, where: PayloadFilter | None = None
    ) -> list[list[VectorHit]]:
        """Run `search` for each row of `vectors`."""
        shard = self._get_shard(collection)
        queries = as_matrix(vectors, shard.dim, collection)
        check_limit(limit)
        if len(queries) == 0:
            return []
        requests = [_query_request(query, limit, where, self._hnsw_ef) for query in queries]
        with self._using(shard, collection, "search_batch"):
            results = shard.shard.query_batch(edge.QueryBatchRequest(requests))
        return [[_hit(point) for point in scored] for scored in results]

    def retrieve(self, collection: str, ids: Sequence[uuid.UUID]) -> list[VectorPoint]:
        """Return the stored points among `ids` in request order, with unit-length vectors.

        Cosine collections store each vector divided by its L2 norm, so the returned
        vector is the upserted one normalised. Unknown ids are skipped.
        """
        shard = self._get_shard(collection)
        point_ids = unique_ids(ids)
        if not point_ids:
            return []
        with self._using(shard, collection, "retrieve"):
            records = shard.shard.retrieve(
                [uuid.UUID(point_id) for point_id in point_ids], with_payload=True, with_vector=True
            )

        return points_in_order(point_ids, records)

    def count(self, collection: str, where: PayloadFilter | None = None) -> int:
        """Return the number of points matching `where` (all points when None)."""
        shard = self._get_shard(collection)
        request = edge.CountRequest(exact=True, filter=_edge_filter(where))
        with self._using(shard, collection, "count"):
            return shard.shard.count(request)

    def delete(self, collection: str, ids: Sequence[uuid.UUID]) -> None:
        """Delete points by id, ignoring unknown ids."""
        shard = self._get_shard(collection)
        point_ids = unique_ids(ids)
        if not point_ids:
            return
        operation = edge.UpdateOperation.delete_points([uuid.UUID(point_id) for point_id in point_ids])
        with self._using(shard, collection, "delete"):
            shard.shard.update(operation)

    def close(self) -> None:
        """Flush and close every open shard. A later call opens them again."""
        with self._registry_lock:
            shards = self._shards
            self._shards = {}

        first_error: Exception | None = None
        for name, shard in shards.items():
            with shard.lock:
                shard.closed = True
                try:
                    shard.shard.flush()
                    shard.shard.close()
                except Exception as error:  # qdrant-edge raises plain Exception.
                    logger.error(
                        "vector_shard_close_failed", collection=name, path=str(shard.path), error=str(error)
                    )
                    first_error = first_error or error
                else:
                    logger.info("vector_shard_closed", collection=name, path=str(shard.path))

        if first_error is not None:
            raise VectorIndexError(
                f"failed to flush or close a qdrant-edge shard under {self._root}: {first_error}"
            ) from first_error

    def _unindexed_points(self, shard: _Shard, collection: str) -> int:
        with self._using(shard, collection, "info"):
            info = shard.shard.info()
        return info.points_count - info.indexed_vectors_count

    @contextmanager
    def _using(self, shard: _Shard, collection: str, action: str) -> Iterator[None]:
        """Hold the shard lock and turn qdrant-edge errors into VectorIndexError."""
        with shard.lock:
            if shard.closed:
                raise VectorIndexError(
                    f"qdrant-edge {action} on collection {collection!r} failed because the index was closed "
                    "during the call: retry it, which opens the shard again"
                )
            try:
                yield
            except Exception as error:  # qdrant-edge raises plain Exception.
                raise VectorIndexError(
                    f"qdrant-edge {action} on collection {collection!r} at {shard.path} failed: {error}"
                ) from error

    def _get_shard(self, name: str, requested_dim: int | None = None) -> _Shard:
        """Return the open shard of collection `name`, opening or creating it under the registry lock.

        With `requested_dim` set, a missing collection is created with that dim. Without
        it, a missing collection raises VectorIndexError.
        """
        with self._registry_lock:
            shard = self._shards.get(name)
            if shard is None:
                check_collection_name(name)
                shard = self._open(name, requested_dim)
                self._shards[name] = shard

        if requested_dim is not None and requested_dim != shard.dim:
            raise _dim_mismatch(name, shard.dim, requested_dim, shard.path)
        return shard

    def _open(self, name: str, requested_dim: int | None) -> _Shard:
        """Load the shard folder of `name`, or create it when `requested_dim` is set."""
        path = self._root / name
        metadata_path = self._root / f"{name}.json"
        shard_exists = (path / "edge_config.json").exists() or (path / "segments").exists()
        stored_dim = _read_dim(metadata_path)

        if stored_dim is not None:
            if requested_dim is not None and requested_dim != stored_dim:
                raise _dim_mismatch(name, stored_dim, requested_dim, path)
            dim = stored_dim
        elif requested_dim is not None:
            dim = requested_dim
        elif shard_exists:
            raise VectorIndexError(
                f"collection {name!r} at {path} has no dim file {metadata_path}: "
                "call ensure_collection with the embedding dim once to record it"
            )
        else:
            raise VectorIndexError(
                f"collection {name!r} not found under {self._root}: call ensure_collection first"
            )

        config = edge.EdgeConfig(
            vectors=edge.EdgeVectorParams(size=dim, distance=edge.Distance.Cosine),
            hnsw_config=edge.HnswIndexConfig(
                m=HNSW_M, ef_construct=HNSW_EF_CONSTRUCT, full_scan_threshold=self._full_scan_threshold_kb
            ),
            optimizers=edge.EdgeOptimizersConfig(indexing_threshold=self._indexing_threshold_kb),
        )
        try:
            if shard_exists:
                # With a config, load checks it against the stored segments and rejects another dim.
                shard = edge.EdgeShard.load(str(path), config)
            else:
                # The dim file is written first, so a crash before create leaves a file that
                # the next call completes instead of a shard without a recorded dim.
                _write_dim(metadata_path, name, dim)
                shard = edge.EdgeShard.create(str(path), config)
        except Exception as error:  # qdrant-edge raises plain Exception.
            if _LOCKED_MARKER in str(error):
                raise VectorIndexError(
                    f"qdrant-edge shard folder {path} is locked by another open handle: only one endodoc "
                    "process may use the embedded vector store at a time, so stop the other process "
                    "or set ENDODOC_QDRANT_URL to use a Qdrant server"
                ) from error
            raise VectorIndexError(
                f"failed to open qdrant-edge shard {path} of collection {name!r}: {error}"
            ) from error

        opened = _Shard(shard=shard, dim=dim, path=path)
        try:
            if stored_dim is None and shard_exists:
                _write_dim(metadata_path, name, dim)
            self._ensure_payload_indexes(name, opened)
        except BaseException:
            # Release the folder lock, or the next attempt in this process would find it held.
            shard.close()
            raise
        logger.info("vector_shard_opened", collection=name, path=str(path), dim=dim, created=not shard_exists)
        return opened

    def _ensure_payload_indexes(self, name: str, shard: _Shard) -> None:
        """Create the keyword payload indexes that the shard lacks."""
        with self._using(shard, name, "create_field_index"):
            existing = shard.shard.info().payload_schema
            for field_name in KEYWORD_FIELDS:
                if field_name not in existing:
                    shard.shard.update(edge.UpdateOperation.create_field_index(field_name, _keyword_index(field_name)))


def _keyword_index(field_name: str) -> edge.KeywordIndexParams:
    """Return keyword index params, marking `site_id` as the tenant field so each site's points are stored together.

    Indexes are only created when missing, so shards created before keep a plain `site_id` index.
    """
    return edge.KeywordIndexParams(is_tenant=field_name == "site_id")


def _query_request(
    vector: np.ndarray, limit: int, where: PayloadFilter | None, hnsw_ef: int
) -> edge.QueryRequest:
    return edge.QueryRequest(
        limit=limit,
        query=edge.Query.Nearest(vector.tolist()),
        filter=_edge_filter(where),
        with_payload=True,
        with_vector=False,
        params=edge.SearchParams(hnsw_ef=hnsw_ef),
    )


def _edge_filter(where: PayloadFilter | None) -> edge.Filter | None:
    """Translate a payload filter into a qdrant-edge filter whose conditions must all match."""
    terms = filter_terms(where)
    if not terms:
        return None
    conditions = []
    for key, value in terms:
        match = edge.MatchValue(value) if isinstance(value, str) else edge.MatchAny(value)
        conditions.append(edge.FieldCondition(key, match=match))
    return edge.Filter(must=conditions)


def _hit(point: edge.ScoredPoint) -> VectorHit:
    return VectorHit(id=uuid.UUID(str(point.id)), score=float(point.score), payload=dict(point.payload or {}))


def _dim_mismatch(name: str, stored_dim: int, requested_dim: int, path: Path) -> VectorIndexError:
    return VectorIndexError(
        f"collection {name!r} stores vectors of dim {stored_dim}, but dim {requested_dim} was requested: "
        f"use the collection of the current model version, or delete {path} and its .json file to rebuild it"
    )


def _read_dim(metadata_path: Path) -> int | None:
    """Return the dim recorded in `metadata_path`, or None when the file does not exist."""
    try:
        text = metadata_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        dim = json.loads(text)["dim"]
    except (ValueError, KeyError, TypeError) as error:
        raise VectorIndexError(
            f"invalid collection dim file {metadata_path} ({error}): delete it and call ensure_collection again"
        ) from error
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise VectorIndexError(
            f"invalid dim {dim!r} in {metadata_path}: delete the file and call ensure_collection again"
        )
    return dim


def _write_dim(metadata_path: Path, name: str, dim: int) -> None:
    """Write the collection's dim through a temporary file, so readers never see half a file."""
    metadata_path.parent.mkdir(parents=True, exist_ok=True)
    temporary = metadata_path.with_suffix(".json.tmp")
    temporary.write_text(json.dumps({"collection": name, "dim": dim, "distance": "cosine"}), encoding="utf-8")
    os.replace(temporary, metadata_path)
