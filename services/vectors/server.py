"""The production vector index: collections on a Qdrant server, reached through qdrant-client."""

from __future__ import annotations

import math
import threading
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import httpx
import numpy as np
import structlog
from qdrant_client import QdrantClient, models
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

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

# `site_id` is the tenant key: Qdrant co-locates each site's points when it is marked `is_tenant`.
KEYWORD_FIELDS = {"site_id": True, "procedure_id": False, "label": False}

# Upsert requests end at this many points or this many bytes of estimated JSON, whichever
# comes first. Qdrant's default request body limit is 32 MiB (`service.max_request_size_mb`).
UPSERT_BATCH_SIZE = 256
UPSERT_BATCH_BYTES = 8 * 1024 * 1024

# A float32 written as JSON by qdrant-client takes up to about 24 characters with its separator.
_JSON_BYTES_PER_FLOAT = 24

_FIX_UNREACHABLE = "start Qdrant there or set ENDODOC_QDRANT_URL to a running server"


class QdrantServerIndex:
    """Vector collections on the Qdrant server behind `client`.

    `location` names the server in error messages. It defaults to the URL, host or path
    the client was created with. qdrant-client's local mode (`QdrantClient(path=...)`)
    works too, as a stand-in for the server in tests, but it ignores payload indexes.
    """

    def __init__(self, client: QdrantClient, *, location: str | None = None) -> None:
        self._client = client
        self._location = location or _describe_client(client)
        self._dims: dict[str, int] = {}
        self._dims_lock = threading.Lock()

    @classmethod
    def from_url(cls, url: str, api_key: str | None, timeout_s: float) -> QdrantServerIndex:
        """Create an index on the Qdrant server at `url` without sending a request until first use.

        qdrant-client 1.20.0 rounds the timeout up to whole seconds.
        """
        client = QdrantClient(
            url=url,
            api_key=api_key,
            timeout=max(1, math.ceil(timeout_s)),
            check_compatibility=False,
        )
        return cls(client, location=url)

    def ensure_collection(self, name: str, dim: int) -> None:
        """Create the collection and its payload indexes unless it exists, and reject a different dim."""
        check_collection_name(name)
        check_dim(dim)

        with self._errors(name, "ensure_collection"):
            exists = self._client.collection_exists(name)
        if not exists:
            self._create_collection(name, dim)

        stored_dim = self._fetch_dim(name)
        if stored_dim != dim:
            raise VectorIndexError(
                f"collection {name!r} on Qdrant at {self._location} stores vectors of dim {stored_dim}, "
                f"but dim {dim} was requested: use the collection of the current model version, "
                "or delete the collection on the server to rebuild it"
            )
        self._ensure_payload_indexes(name)

    def upsert(self, collection: str, points: Sequence[VectorPoint]) -> None:
        """Insert or replace points by id in batches, so an existing id keeps one point."""
        dim = self._dim(collection)
        structs = []
        for point in points:
            point_id, vector, payload = check_point(point, dim, collection)
            structs.append(models.PointStruct(id=point_id, vector=vector.tolist(), payload=payload))

        for batch in upsert_batches(structs, UPSERT_BATCH_SIZE, UPSERT_BATCH_BYTES):
            with self._errors(collection, "upsert"):
                self._client.upsert(collection_name=collection, points=batch, wait=True)

    def iter_point_ids(self, collection: str, page_size: int = 500) -> Iterator[uuid.UUID]:
        """Yield every point id of `collection`, one scroll request per page."""
        self._dim(collection)
        offset: models.ExtendedPointId | None = None
        while True:
            with self._errors(collection, "scroll"):
                records, offset = self._client.scroll(
                    collection_name=collection, limit=page_size, offset=offset, with_payload=False, with_vectors=False
                )
            for record in records:
                yield uuid.UUID(str(record.id))
            if offset is None:
                return

    def switch_alias(self, alias: str, collection: str) -> str | None:
        """Point `alias` at `collection` in one atomic request; return the collection it named before."""
        check_collection_name(alias)
        self._dim(collection)
        previous = self.alias_target(alias)
        actions: list[models.AliasOperations] = []
        if previous is not None:
            actions.append(models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=alias)))
        actions.append(
            models.CreateAliasOperation(create_alias=models.CreateAlias(collection_name=collection, alias_name=alias))
        )
        with self._errors(collection, "update_collection_aliases"):
            self._client.update_collection_aliases(change_aliases_operations=actions)
        logger.info("vector_alias_switched", alias=alias, collection=collection, previous=previous)
        return previous

    def alias_target(self, alias: str) -> str | None:
        """Return the collection `alias` names, or None when no such alias exists."""
        with self._errors(alias, "get_aliases"):
            aliases = self._client.get_aliases().aliases
        for description in aliases:
            if description.alias_name == alias:
                return description.collection_name
        return None

    def search(
        self, collection: str, vector: np.ndarray, limit: int, where: PayloadFilter | None = None
    ) -> list[VectorHit]:
        """Return up to `limit` nearest points, best first, among those matching `where`."""
        query = as_vector(vector, self._dim(collection), collection)
        check_limit(limit)
        with self._errors(collection, "search"):
            response = self._client.query_points(
                collection_name=collection,
                query=query.tolist(),
                query_filter=_server_filter(where),
                limit=limit,
                with_payload=True,
                with_vectors=False,
            )
        return [_hit(point) for point in response.points]

    def search_batch(
        self, collection: str, vectors: np.ndarray, limit: int, where: PayloadFilter | None = None
    ) -> list[list[VectorHit]]:
        """Run `search` for each row of `vectors` in one request."""
        queries = as_matrix(vectors, self._dim(collection), collection)
        check_limit(limit)
        if len(queries) == 0:
            return []
        query_filter = _server_filter(where)
        requests = [
            models.QueryRequest(
                query=query.tolist(), filter=query_filter, limit=limit, with_payload=True, with_vector=False
            )
            for query in queries
        ]
        with self._errors(collection, "search_batch"):
            responses = self._client.query_batch_points(collection_name=collection, requests=requests)
        return [[_hit(point) for point in response.points] for response in responses]

    def retrieve(self, collection: str, ids: Sequence[uuid.UUID]) -> list[VectorPoint]:
        """Return the stored points among `ids` in request order, with unit-length vectors.

        Cosine collections store each vector divided by its L2 norm, so the returned
        vector is the upserted one normalised. Unknown ids are skipped.
        """
        self._dim(collection)
        point_ids = unique_ids(ids)
        if not point_ids:
            return []
        with self._errors(collection, "retrieve"):
            records = self._client.retrieve(
                collection_name=collection, ids=point_ids, with_payload=True, with_vectors=True
            )

        return points_in_order(point_ids, records)

    def count(self, collection: str, where: PayloadFilter | None = None) -> int:
        """Return the exact number of points matching `where` (all points when None)."""
        self._dim(collection)
        with self._errors(collection, "count"):
            result = self._client.count(collection_name=collection, count_filter=_server_filter(where), exact=True)
        return result.count

    def delete(self, collection: str, ids: Sequence[uuid.UUID]) -> None:
        """Delete points by id, ignoring unknown ids."""
        self._dim(collection)
        point_ids = unique_ids(ids)
        if not point_ids:
            return
        with self._errors(collection, "delete"):
            self._client.delete(
                collection_name=collection, points_selector=models.PointIdsList(points=point_ids), wait=True
            )

    def close(self) -> None:
        """Close the client's connections. Upserts have already waited for the server to apply them."""
        self._client.close()

    def _create_collection(self, name: str, dim: int) -> None:
        try:
            with self._errors(name, "create_collection"):
                self._client.create_collection(
                    collection_name=name,
                    vectors_config=models.VectorParams(size=dim, distance=models.Distance.COSINE),
                )
        except VectorIndexError as error:
            # Another worker may have created it between the existence check and this call.
            if not isinstance(error.__cause__, UnexpectedResponse) or error.__cause__.status_code != 409:
                raise
        logger.info("vector_collection_created", collection=name, dim=dim, location=self._location)

    def _ensure_payload_indexes(self, name: str) -> None:
        """Create the keyword payload indexes that the collection lacks.

        NOTE: local mode (qdrant-client 1.20.0) stores these indexes but does not use them,
        and it emits a UserWarning once per process.
        """
        with self._errors(name, "create_payload_index"):
            existing = self._client.get_collection(name).payload_schema
            for field_name, is_tenant in KEYWORD_FIELDS.items():
                if field_name in existing:
                    continue
                schema = models.KeywordIndexParams(type=models.KeywordIndexType.KEYWORD, is_tenant=is_tenant)
                self._client.create_payload_index(
                    collection_name=name, field_name=field_name, field_schema=schema, wait=True
                )

    def _dim(self, collection: str) -> int:
        """Return the vector dim of `collection`, asking the server once per collection."""
        with self._dims_lock:
            dim = self._dims.get(collection)
        if dim is not None:
            return dim

        check_collection_name(collection)
        with self._errors(collection, "get_collection"):
            exists = self._client.collection_exists(collection)
        if not exists:
            raise VectorIndexError(
                f"collection {collection!r} not found on Qdrant at {self._location}: call ensure_collection first"
            )
        return self._fetch_dim(collection)

    def _fetch_dim(self, collection: str) -> int:
        """Read the vector dim of an existing collection from the server and cache it."""
        with self._errors(collection, "get_collection"):
            vectors = self._client.get_collection(collection).config.params.vectors
        if not isinstance(vectors, models.VectorParams):
            raise VectorIndexError(
                f"collection {collection!r} on Qdrant at {self._location} has named vectors {vectors!r}, "
                "but endodoc stores one unnamed vector per point: use another collection name"
            )
        with self._dims_lock:
            self._dims[collection] = vectors.size
        return vectors.size

    @contextmanager
    def _errors(self, collection: str, action: str) -> Iterator[None]:
        """Turn qdrant-client transport and HTTP errors into VectorIndexError naming the server."""
        try:
            yield
        except UnexpectedResponse as error:
            raise VectorIndexError(self._describe_response(error, collection, action)) from error
        except ResponseHandlingException as error:
            raise VectorIndexError(self._describe_transport(error.source, action)) from error
        except httpx.HTTPError as error:
            raise VectorIndexError(self._describe_transport(error, action)) from error

    def _describe_response(self, error: UnexpectedResponse, collection: str, action: str) -> str:
        status = error.status_code
        if status == 404:
            return (
                f"collection {collection!r} not found on Qdrant at {self._location} (HTTP 404 during {action}): "
                "call ensure_collection first, or check that ENDODOC_QDRANT_URL points at the Qdrant REST port"
            )
        if status in (401, 403):
            return (
                f"Qdrant at {self._location} rejected the API key with HTTP {status} during {action}: "
                "set ENDODOC_QDRANT_API_KEY to the server's key"
            )
        body = error.content.decode("utf-8", errors="replace")[:500]
        return (
            f"Qdrant at {self._location} returned HTTP {status} during {action} "
            f"on collection {collection!r}: {body}"
        )

    def _describe_transport(self, source: BaseException, action: str) -> str:
        if isinstance(source, httpx.TimeoutException):
            return (
                f"Qdrant at {self._location} timed out during {action} ({source!r}): check that Qdrant "
                "runs there and is not overloaded, or raise ENDODOC_QDRANT_TIMEOUT_S"
            )
        return f"cannot reach Qdrant at {self._location} during {action} ({source!r}): {_FIX_UNREACHABLE}"


def upsert_batches(
    points: Sequence[models.PointStruct], max_count: int, max_bytes: int
) -> Iterator[list[models.PointStruct]]:
    """Split points into batches of at most `max_count` points and about `max_bytes` of JSON each.

    A single point larger than `max_bytes` still goes alone in its own batch.
    """
    batch: list[models.PointStruct] = []
    batch_bytes = 0
    for point in points:
        size = _estimate_json_bytes(point)
        if batch and (len(batch) >= max_count or batch_bytes + size > max_bytes):
            yield batch
            batch, batch_bytes = [], 0
        batch.append(point)
        batch_bytes += size
    if batch:
        yield batch


def _estimate_json_bytes(point: models.PointStruct) -> int:
    """Estimate the JSON size of one point from its vector length and payload strings."""
    vector = point.vector if isinstance(point.vector, list) else []
    payload = point.payload or {}
    payload_bytes = sum(len(str(key)) + len(str(value)) + 8 for key, value in payload.items())
    return 64 + _JSON_BYTES_PER_FLOAT * len(vector) + payload_bytes


def _describe_client(client: QdrantClient) -> str:
    """Return the URL, host or path that `client` was created with, for error messages."""
    options = client.init_options
    for key in ("url", "host", "path", "location"):
        if options.get(key):
            return str(options[key])
    return "http://localhost:6333"


def _server_filter(where: PayloadFilter | None) -> models.Filter | None:
    """Translate a payload filter into a Qdrant filter whose conditions must all match."""
    terms = filter_terms(where)
    if not terms:
        return None
    conditions: list[models.Condition] = []
    for key, value in terms:
        match = models.MatchValue(value=value) if isinstance(value, str) else models.MatchAny(any=value)
        conditions.append(models.FieldCondition(key=key, match=match))
    return models.Filter(must=conditions)


def _hit(point: models.ScoredPoint) -> VectorHit:
    return VectorHit(id=uuid.UUID(str(point.id)), score=float(point.score), payload=dict(point.payload or {}))
