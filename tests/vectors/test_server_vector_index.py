"""Behaviour of the Qdrant server index beyond the shared contract: connection and HTTP errors.

No Qdrant server runs in these tests. The error cases use loopback addresses only: a closed
port, a socket that never responds, and a small HTTP server that rejects every request.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from qdrant_client import QdrantClient
from vector_gallery import COLLECTION, DIM

from services.vectors import VectorIndexError
from services.vectors.server import QdrantServerIndex

pytestmark = pytest.mark.filterwarnings("ignore:Payload indexes have no effect:UserWarning")

# Nothing listens on TCP port 1 of the loopback interface, so connecting is refused at once.
CLOSED_URL = "http://127.0.0.1:1"


def test_unreachable_server_names_url_and_fix() -> None:
    index = QdrantServerIndex.from_url(CLOSED_URL, api_key=None, timeout_s=1.0)
    started = time.monotonic()

    with pytest.raises(VectorIndexError) as raised:
        index.ensure_collection(COLLECTION, DIM)

    assert time.monotonic() - started < 5
    message = str(raised.value)
    assert CLOSED_URL in message
    assert "ENDODOC_QDRANT_URL" in message
    assert "start Qdrant" in message
    index.close()


@pytest.mark.parametrize("operation", ["count", "search", "retrieve", "delete"])
def test_unreachable_server_fails_every_operation(operation: str) -> None:
    index = QdrantServerIndex.from_url(CLOSED_URL, api_key=None, timeout_s=1.0)
    calls = {
        "count": lambda: index.count(COLLECTION),
        "search": lambda: index.search(COLLECTION, np.ones(DIM), limit=3),
        "retrieve": lambda: index.retrieve(COLLECTION, []),
        "delete": lambda: index.delete(COLLECTION, []),
    }

    with pytest.raises(VectorIndexError, match=CLOSED_URL):
        calls[operation]()
    index.close()


@pytest.fixture
def silent_url() -> Iterator[str]:
    """A loopback port that accepts connections but never responds."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    listener.close()


def test_silent_server_times_out(silent_url: str) -> None:
    index = QdrantServerIndex.from_url(silent_url, api_key=None, timeout_s=1.0)
    started = time.monotonic()

    with pytest.raises(VectorIndexError) as raised:
        index.count(COLLECTION)

    assert time.monotonic() - started < 10
    message = str(raised.value)
    assert "timed out" in message
    assert silent_url in message
    index.close()


class _RejectingHandler(BaseHTTPRequestHandler):
    """Respond to every request with HTTP 401, as Qdrant does for a wrong API key."""

    def _reject(self) -> None:
        body = b'{"status": {"error": "Must provide an API key or an Authorization bearer token"}}'
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = _reject

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def rejecting_url() -> Iterator[str]:
    """A loopback HTTP server that rejects every request with HTTP 401."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _RejectingHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_rejected_api_key_names_setting(rejecting_url: str) -> None:
    index = QdrantServerIndex.from_url(rejecting_url, api_key=None, timeout_s=1.0)

    with pytest.raises(VectorIndexError) as raised:
        index.ensure_collection(COLLECTION, DIM)

    message = str(raised.value)
    assert "HTTP 401" in message
    assert "ENDODOC_QDRANT_API_KEY" in message
    assert rejecting_url in message
    index.close()


def test_local_mode_accepts_payload_indexes(tmp_path: Path) -> None:
    index = QdrantServerIndex(QdrantClient(path=str(tmp_path / "qdrant-local")))

    index.ensure_collection(COLLECTION, DIM)
    index.ensure_collection(COLLECTION, DIM)

    assert index.count(COLLECTION) == 0
    index.close()


def test_error_names_local_path_without_url(tmp_path: Path) -> None:
    path = tmp_path / "qdrant-local"
    index = QdrantServerIndex(QdrantClient(path=str(path)))

    with pytest.raises(VectorIndexError) as raised:
        index.count("images__missing-model")

    assert str(path) in str(raised.value)
    index.close()
