"""A test-only Qdrant REST server backed by qdrant-client's local mode.

qdrant-client's local mode locks its folder to one process, and no Qdrant server binary can
be installed on the build machines. This server lets an API process and separate Celery
worker processes share one local-mode store over the Qdrant REST API, so the production
backend (`QdrantServerIndex.from_url`) talks HTTP exactly as it would to a real server.

It serves only the REST paths that endodoc's server backend sends. It does not cover:
payload indexes (it records each index request and reports it back in the collection info
as a server does, but searches scan every point), `is_tenant` co-location, clustering,
sharding, replication, snapshots, API keys and gRPC.

Run: `python tests/qdrant_standin/server.py --path DIR [--port 0]`. It prints
`listening on http://127.0.0.1:PORT` on its first line of standard output.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ValidationError
from qdrant_client import QdrantClient
from qdrant_client.http import models

Handler = Callable[[QdrantClient, str, dict[str, Any]], Any]

# Payload index requests per collection, reported back in the collection info. Local mode
# (qdrant-client 1.20.0) accepts `create_payload_index` but neither keeps nor reports it.
PAYLOAD_INDEXES: dict[str, dict[str, Any]] = {}


class NotFoundError(Exception):
    """The request names a collection or route that does not exist (HTTP 404)."""


def _jsonable(value: Any) -> Any:
    """Convert qdrant-client response models (and lists, tuples of them) to JSON values."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", exclude_none=True)
    if isinstance(value, list | tuple):
        return [_jsonable(item) for item in value]
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    return value


def _require(client: QdrantClient, name: str) -> None:
    if not client.collection_exists(name):
        raise NotFoundError(f"Collection `{name}` doesn't exist!")


def _completed() -> dict[str, Any]:
    return {"operation_id": 0, "status": "completed"}


def _collection_exists(client: QdrantClient, name: str, body: dict) -> Any:
    return {"exists": client.collection_exists(name)}


def _get_collection(client: QdrantClient, name: str, body: dict) -> Any:
    _require(client, name)
    info = _jsonable(client.get_collection(name))
    info["payload_schema"] = dict(PAYLOAD_INDEXES.get(name, {}))
    return info


def _list_collections(client: QdrantClient, name: str, body: dict) -> Any:
    return client.get_collections()


def _create_collection(client: QdrantClient, name: str, body: dict) -> Any:
    if client.collection_exists(name):
        raise ValueError(f"Wrong input: Collection `{name}` already exists!")
    request = models.CreateCollection.model_validate(body)
    client.create_collection(name, vectors_config=request.vectors)
    return True


def _delete_collection(client: QdrantClient, name: str, body: dict) -> Any:
    PAYLOAD_INDEXES.pop(name, None)
    return client.delete_collection(name)


def _create_index(client: QdrantClient, name: str, body: dict) -> Any:
    _require(client, name)
    request = models.CreateFieldIndex.model_validate(body)
    schema = request.field_schema
    if isinstance(schema, models.KeywordIndexParams):
        info = models.PayloadIndexInfo(data_type=models.PayloadSchemaType.KEYWORD, params=schema, points=0)
    elif isinstance(schema, models.PayloadSchemaType):
        info = models.PayloadIndexInfo(data_type=schema, points=0)
    else:
        raise ValueError(f"the stand-in records only keyword payload indexes, got {schema!r}")
    PAYLOAD_INDEXES.setdefault(name, {})[request.field_name] = _jsonable(info)
    return _completed()


def _upsert(client: QdrantClient, name: str, body: dict) -> Any:
    _require(client, name)
    request = models.PointsList.model_validate(body)
    client.upsert(name, points=request.points)
    return _completed()


def _delete_points(client: QdrantClient, name: str, body: dict) -> Any:
    _require(client, name)
    if "points" in body:
        selector: models.PointsSelector = models.PointIdsList.model_validate(body)
    else:
        selector = models.FilterSelector.model_validate(body)
    client.delete(name, points_selector=selector)
    return _completed()


def _query(client: QdrantClient, name: str, body: dict) -> Any:
    _require(client, name)
    request = models.QueryRequest.model_validate(body)
    return client.query_points(
        name,
        query=request.query,
        query_filter=request.filter,
        limit=request.limit or 10,
        offset=request.offset,
        with_payload=request.with_payload if request.with_payload is not None else False,
        with_vectors=request.with_vector if request.with_vector is not None else False,
        score_threshold=request.score_threshold,
    )


def _query_batch(client: QdrantClient, name: str, body: dict) -> Any:
    _require(client, name)
    request = models.QueryRequestBatch.model_validate(body)
    return client.query_batch_points(name, requests=request.searches)


def _retrieve(client: QdrantClient, name: str, body: dict) -> Any:
    _require(client, name)
    request = models.PointRequest.model_validate(body)
    return client.retrieve(
        name,
        ids=request.ids,
        with_payload=request.with_payload if request.with_payload is not None else True,
        with_vectors=request.with_vector if request.with_vector is not None else False,
    )


def _count(client: QdrantClient, name: str, body: dict) -> Any:
    _require(client, name)
    request = models.CountRequest.model_validate(body)
    return client.count(name, count_filter=request.filter, exact=True)


def _scroll(client: QdrantClient, name: str, body: dict) -> Any:
    _require(client, name)
    request = models.ScrollRequest.model_validate(body)
    points, next_offset = client.scroll(
        name,
        scroll_filter=request.filter,
        limit=request.limit or 10,
        offset=request.offset,
        with_payload=request.with_payload if request.with_payload is not None else True,
        with_vectors=request.with_vector if request.with_vector is not None else False,
    )
    return {"points": points, "next_page_offset": next_offset}


def _update_aliases(client: QdrantClient, name: str, body: dict) -> Any:
    request = models.ChangeAliasesOperation.model_validate(body)
    for operation in request.actions:
        if isinstance(operation, models.CreateAliasOperation):
            _require(client, operation.create_alias.collection_name)
    return client.update_collection_aliases(change_aliases_operations=request.actions)


def _list_aliases(client: QdrantClient, name: str, body: dict) -> Any:
    return client.get_aliases()


def _collection_aliases(client: QdrantClient, name: str, body: dict) -> Any:
    return client.get_collection_aliases(name)


_NAME = r"(?P<name>[^/]+)"
ROUTES: list[tuple[str, re.Pattern[str], Handler]] = [
    ("GET", re.compile(r"/collections"), _list_collections),
    ("GET", re.compile(r"/aliases"), _list_aliases),
    ("POST", re.compile(r"/collections/aliases"), _update_aliases),
    ("GET", re.compile(rf"/collections/{_NAME}/exists"), _collection_exists),
    ("GET", re.compile(rf"/collections/{_NAME}/aliases"), _collection_aliases),
    ("GET", re.compile(rf"/collections/{_NAME}"), _get_collection),
    ("PUT", re.compile(rf"/collections/{_NAME}"), _create_collection),
    ("DELETE", re.compile(rf"/collections/{_NAME}"), _delete_collection),
    ("PUT", re.compile(rf"/collections/{_NAME}/index"), _create_index),
    ("PUT", re.compile(rf"/collections/{_NAME}/points"), _upsert),
    ("POST", re.compile(rf"/collections/{_NAME}/points"), _retrieve),
    ("POST", re.compile(rf"/collections/{_NAME}/points/delete"), _delete_points),
    ("POST", re.compile(rf"/collections/{_NAME}/points/query"), _query),
    ("POST", re.compile(rf"/collections/{_NAME}/points/query/batch"), _query_batch),
    ("POST", re.compile(rf"/collections/{_NAME}/points/count"), _count),
    ("POST", re.compile(rf"/collections/{_NAME}/points/scroll"), _scroll),
]


class StandInServer(ThreadingHTTPServer):
    """HTTP server whose handlers share one local-mode client behind one lock."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], client: QdrantClient) -> None:
        super().__init__(address, RequestHandler)
        self.client = client
        # Local mode is not thread-safe, so requests are applied one at a time.
        self.lock = threading.Lock()


class RequestHandler(BaseHTTPRequestHandler):
    """Routes Qdrant REST requests to the local-mode client and wraps results as Qdrant does."""

    protocol_version = "HTTP/1.1"
    server: StandInServer

    def _handle(self) -> None:
        started = time.perf_counter()
        # Query parameters such as `wait` and `timeout` are ignored because local mode applies every change at once.
        parts = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else {}
            handler, name = self._route(self.command, parts.path)
            with self.server.lock:
                result = handler(self.server.client, name, body)
        except NotFoundError as error:
            self._send(404, {"status": {"error": f"Not found: {error}"}, "time": 0.0})
            return
        except (ValueError, ValidationError) as error:
            status = 404 if "not found" in str(error).lower() else 400
            self._send(status, {"status": {"error": f"Bad request: {error}"}, "time": 0.0})
            return
        # Unexpected failures go back to the client as HTTP 500, as a server bug would.
        except Exception as error:  # noqa: BLE001
            self._send(500, {"status": {"error": f"{type(error).__name__}: {error}"}, "time": 0.0})
            return
        self._send(200, {"result": _jsonable(result), "status": "ok", "time": time.perf_counter() - started})

    def _route(self, method: str, path: str) -> tuple[Handler, str]:
        for route_method, pattern, handler in ROUTES:
            match = pattern.fullmatch(path)
            if route_method == method and match:
                return handler, match.groupdict().get("name", "")
        raise NotFoundError(f"no stand-in route for {method} {path}")

    def _send(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_PUT = do_POST = do_DELETE = do_PATCH = _handle

    def log_message(self, format: str, *args: object) -> None:
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Serve qdrant-client's local mode over the Qdrant REST API (tests only).")
    parser.add_argument("--path", required=True, help="local-mode storage folder")
    parser.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1; 0 picks a free one")
    args = parser.parse_args(argv)

    import warnings

    warnings.filterwarnings("ignore", message="Payload indexes have no effect")
    client = QdrantClient(path=args.path)
    server = StandInServer(("127.0.0.1", args.port), client)
    print(f"listening on http://127.0.0.1:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
