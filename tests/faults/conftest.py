"""Fixtures of the fault tests: private servers that a test may stop and start again.

The service a test breaks runs as a private process (tests/faults/servers.py). The others
are the machine's PostgreSQL and Redis, as in tests/integration, and the Qdrant stand-in,
because no test may stop the servers that other test runs share.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import skip_or_fail
from tests.faults.servers import FaultSetupError, PrivatePostgres, PrivateRedis, StandInQdrant
from tests.integration.conftest import redis_url  # noqa: F401  (the machine's Redis, one locked database)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    """Return a running redis-server of this test only, which the test may kill and start again."""
    try:
        server = PrivateRedis(tmp_path / "redis")
        server.start()
    except FaultSetupError as error:
        skip_or_fail(f"cannot start a private Redis: {error}")
    yield server
    server.stop()


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    """Return a running PostgreSQL cluster of this test only, which the test may stop and start again."""
    server = None
    try:
        server = PrivatePostgres()
        server.init()
        server.start()
    except FaultSetupError as error:
        if server is not None:
            server.close()
        skip_or_fail(f"cannot start a private PostgreSQL: {error}")
    yield server
    server.close()


@pytest.fixture
def standin_qdrant(tmp_path: Path) -> Iterator[StandInQdrant]:
    """Return a running Qdrant stand-in of this test only, which the test may stop and start again."""
    server = StandInQdrant(tmp_path / "qdrant-standin")
    server.start()
    yield server
    server.stop()
