"""An overloaded catalog connection pool gets a 503 the client can retry, not a 500."""

from __future__ import annotations

from sqlalchemy import create_engine, text

from services.db import make_session_factory


def test_exhausted_pool_returns_503(client, runtime, settings):
    # One connection and a short wait, so the request below cannot get a connection while the
    # test holds it. Under real load the same happens when every connection stays busy.
    small_engine = create_engine(
        settings.resolved_database_url, pool_size=1, max_overflow=0, pool_timeout=0.2,
        connect_args={"check_same_thread": False},
    )
    runtime.sessions = make_session_factory(small_engine)
    busy_connection = small_engine.connect()
    busy_connection.execute(text("SELECT 1"))
    try:
        response = client.get("/v1/procedures")
    finally:
        busy_connection.close()
        small_engine.dispose()

    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == "database_busy"
    assert "retry" in response.json()["error"]["message"]
