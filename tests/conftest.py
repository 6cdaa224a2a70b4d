"""Shared fixtures: real images, the real `lite` model, embedded settings and real PostgreSQL."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_ROOT = Path(os.environ.get("ENDODOC_TEST_DATA", REPO_ROOT.parent / "shared" / "data"))
LABELED_IMAGES = DATA_ROOT / "hyperkvasir-lower-gi"
POSTGRES_URL = os.environ.get("ENDODOC_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def skip_or_fail(reason: str) -> None:
    """Skip a test whose outside resource is missing, but fail under CI, where every resource must exist."""
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: service-backed and data-backed tests must not skip)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def labeled_images() -> Path:
    """Return the HyperKvasir class folders (one folder per class)."""
    if not LABELED_IMAGES.is_dir():
        skip_or_fail(f"real images not found at {LABELED_IMAGES}: set ENDODOC_TEST_DATA to the shared data folder")
    return LABELED_IMAGES


def class_images(root: Path, label: str, count: int) -> list[Path]:
    """Return the first `count` images of one class folder, in name order."""
    return sorted((root / label).glob("*.jpg"))[:count]


@pytest.fixture(scope="session")
def lite_embedder():
    """Load the `lite` profile with its real ImageNet weights once for the whole test session."""
    from services.embedding import load_embedder
    from services.settings import ModelSettings

    return load_embedder(ModelSettings(profile="lite", batch_size=16))


@pytest.fixture
def settings(tmp_path: Path):
    """Return embedded-mode settings whose data directory is this test's temporary folder."""
    from services.settings import ModelSettings, Settings

    return Settings(
        data_dir=tmp_path / "data",
        database_url=None,
        qdrant_url=None,
        broker_url=None,
        model=ModelSettings(profile="lite", batch_size=16),
    )


@pytest.fixture
def runtime(settings, lite_embedder) -> Iterator:
    """Return an embedded runtime with a migrated SQLite database and the shared `lite` model."""
    from services.runtime import Runtime
    from services.schema import ensure_schema

    runtime = Runtime(settings, embedder=lite_embedder)
    ensure_schema(runtime)
    yield runtime
    runtime.close()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """Create an empty PostgreSQL database for one test and drop it afterwards."""
    import psycopg
    from sqlalchemy.engine import make_url

    url = make_url(POSTGRES_URL)
    conninfo = f"host={url.host} port={url.port or 5432} user={url.username} dbname={url.database}"
    try:
        admin = psycopg.connect(conninfo, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as error:
        skip_or_fail(f"PostgreSQL at {url.host}:{url.port} is not reachable ({error}); set ENDODOC_TEST_POSTGRES_URL")
    name = f"endodoc_test_{uuid.uuid4().hex[:12]}"
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield url.set(database=name).render_as_string(hide_password=False)
        finally:
            admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
