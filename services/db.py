"""Database engine, session factory and the unit of work that owns each transaction."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker


# Seconds a new PostgreSQL connection may take. libpq sets no limit of its own, so a server that
# accepts TCP connections but does not reply held each request for about 130 s in the fault tests.
DEFAULT_CONNECT_TIMEOUT_S = 10


def make_engine(database_url: str, connect_timeout_s: int = DEFAULT_CONNECT_TIMEOUT_S) -> Engine:
    """Create an engine; SQLite gets its folder, foreign keys, and WAL so readers do not wait for writers.

    A PostgreSQL database gets `connect_timeout_s` (libpq accepts whole seconds, at least 2)
    unless the URL sets `connect_timeout` itself.
    """
    url = make_url(database_url)
    # NOTE: PostgreSQL keeps SQLAlchemy's capped pool (5 plus 10 overflow connections), where the
    # wait described for SQLite below can still happen under load. The API then returns 503.
    if url.get_backend_name() == "postgresql" and "connect_timeout" not in url.query:
        return create_engine(url, pool_pre_ping=True, connect_args={"connect_timeout": connect_timeout_s})
    if url.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True)

    pool_options = {}
    if url.database and url.database != ":memory:":
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        # No cap on overflow connections, so a checkout never waits for the pool. A sync route
        # keeps its connection until FastAPI (0.163) has validated the response in its thread
        # pool. With a capped pool, the requests in every pool thread could wait for connections
        # that belong to requests waiting for a thread. Under load that ended in 30 s timeouts.
        pool_options["max_overflow"] = -1
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, **pool_options)

    @event.listens_for(engine, "connect")
    def _configure_sqlite(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    return engine


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(bind=engine, expire_on_commit=False)


@contextmanager
def unit_of_work(factory: sessionmaker[Session]) -> Iterator[Session]:
    """Yield a session that commits when the block succeeds and rolls back when it raises."""
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
