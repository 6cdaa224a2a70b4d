"""Input checks and record conversion shared by the vector index backends."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from services.vectors.base import PayloadFilter, VectorIndexError, VectorPoint

# Collection names become folder names for qdrant-edge, so they stay within one path segment.
_COLLECTION_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,254}")


def check_collection_name(name: str) -> None:
    """Raise ValueError unless `name` is a non-empty name of letters, digits, `_`, `.` and `-`."""
    if not isinstance(name, str) or _COLLECTION_NAME.fullmatch(name) is None or ".." in name:
        raise ValueError(
            f"invalid collection name {name!r}: use 1 to 255 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit and without '..'"
        )


def check_dim(dim: int) -> None:
    """Raise ValueError unless `dim` is a positive integer."""
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise ValueError(f"invalid vector dim {dim!r}: expected a positive integer")


def check_limit(limit: int) -> None:
    """Raise ValueError unless `limit` is a positive integer."""
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"invalid search limit {limit!r}: expected a positive integer")


def as_vector(vector: np.ndarray, dim: int, collection: str) -> np.ndarray:
    """Return `vector` as float32 of shape (dim,), or raise VectorIndexError naming the collection."""
    array = np.asarray(vector, dtype=np.float32)
    if array.shape != (dim,):
        raise VectorIndexError(
            f"vector of shape {array.shape} does not fit collection {collection!r}, "
            f"which stores vectors of dim {dim}: embed with the model version this collection was built for"
        )
    _check_values(array[np.newaxis, :], collection)
    return array


def as_matrix(vectors: np.ndarray, dim: int, collection: str) -> np.ndarray:
    """Return `vectors` as float32 of shape (n, dim), or raise VectorIndexError naming the collection."""
    array = np.asarray(vectors, dtype=np.float32)
    if array.ndim != 2 or array.shape[1] != dim:
        raise VectorIndexError(
            f"vectors of shape {array.shape} do not fit collection {collection!r}, "
            f"which expects shape (n, {dim}): embed with the model version this collection was built for"
        )
    _check_values(array, collection)
    return array


def _check_values(rows: np.ndarray, collection: str) -> None:
    """Raise VectorIndexError if a row contains NaN or infinity or is all zeros."""
    if rows.size == 0:
        return
    if not np.isfinite(rows).all():
        raise VectorIndexError(
            f"vector for collection {collection!r} contains NaN or infinity: check the embedding model output"
        )
    # Cosine similarity divides by the vector norm, so it is undefined for a zero vector.
    if (np.abs(rows).max(axis=1) == 0).any():
        raise VectorIndexError(
            f"vector for collection {collection!r} is all zeros, so its cosine similarity is undefined: "
            "check the embedding model output"
        )


def check_point(point: VectorPoint, dim: int, collection: str) -> tuple[str, np.ndarray, dict[str, str]]:
    """Return the point id as a string, its float32 vector and its payload as a plain dict."""
    if not isinstance(point.id, uuid.UUID):
        raise TypeError(f"invalid point id {point.id!r}: expected a uuid.UUID (the image id)")
    vector = as_vector(point.vector, dim, collection)
    payload = dict(point.payload)
    for key, value in payload.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(
                f"invalid payload item {key!r}: {value!r} on point {point.id}: keys and values must be strings"
            )
    return str(point.id), vector, payload


def filter_terms(where: PayloadFilter | None) -> list[tuple[str, str | list[str]]]:
    """Return `where` as (key, value) terms where a list value means "any of these strings".

    Every term must match. An empty list matches no point.
    """
    if where is None:
        return []
    if not isinstance(where, Mapping):
        raise TypeError(f"invalid payload filter {where!r}: expected a mapping of keys to strings")

    terms: list[tuple[str, str | list[str]]] = []
    for key, value in where.items():
        if not isinstance(key, str):
            raise TypeError(f"invalid payload filter key {key!r}: expected a string")
        if isinstance(value, str):
            terms.append((key, value))
            continue
        if not isinstance(value, Sequence) or not all(isinstance(item, str) for item in value):
            raise TypeError(
                f"invalid payload filter value {value!r} for key {key!r}: expected a string or a list of strings"
            )
        terms.append((key, list(value)))
    return terms


def unique_ids(ids: Sequence[uuid.UUID]) -> list[str]:
    """Return `ids` as strings without duplicates, in their first-seen order."""
    result: dict[str, None] = {}
    for point_id in ids:
        if not isinstance(point_id, uuid.UUID):
            raise TypeError(f"invalid point id {point_id!r}: expected a uuid.UUID (the image id)")
        result[str(point_id)] = None
    return list(result)


def points_in_order(point_ids: Sequence[str], records: Iterable) -> list[VectorPoint]:
    """Turn retrieved records into points in the order of `point_ids`, skipping ids not found.

    Both backends' records have `id`, `vector` and `payload` attributes.
    """
    by_id = {str(record.id): record for record in records}
    return [
        VectorPoint(
            id=uuid.UUID(point_id),
            vector=np.asarray(by_id[point_id].vector, dtype=np.float32),
            payload=dict(by_id[point_id].payload or {}),
        )
        for point_id in point_ids
        if point_id in by_id
    ]
