"""The embedded SQLite engine hands out connections without waiting for the pool."""

from __future__ import annotations

from sqlalchemy import text

from services.db import make_engine

# More than SQLAlchemy's default QueuePool capacity of 5 connections plus 10 overflow.
CONCURRENT_CONNECTIONS = 24


def test_sqlite_engine_opens_beyond_pool_size(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'catalog.sqlite3'}")
    connections = []
    try:
        for _ in range(CONCURRENT_CONNECTIONS):
            connection = engine.connect()
            connection.execute(text("SELECT 1"))
            connections.append(connection)
    finally:
        for connection in connections:
            connection.close()
        engine.dispose()

    assert len(connections) == CONCURRENT_CONNECTIONS
