"""PostgreSQL stopped mid-batch and started again: the API returns 503, the worker retries, nothing is lost.

The private cluster is stopped with `pg_ctl stop -m immediate`, which kills the server as a
crash would, and started again on the same port and data folder, where it recovers from its
write-ahead log.
"""

from __future__ import annotations

import pytest

from services.catalog.models import ImageStatus
from tests.faults.stack import (
    SERVICE_TIMEOUT_S,
    Stopwatch,
    all_embedded,
    assert_embedded_exactly_once,
    images_by_id,
    make_stack,
    open_site_client,
    query_images,
    seed_gallery,
    upload_images,
    wait_for,
)

pytestmark = [
    pytest.mark.faults,
    pytest.mark.redis,
    pytest.mark.timeout(300),
    pytest.mark.filterwarnings("ignore:Payload indexes have no effect:UserWarning"),
]


@pytest.fixture
def stack(private_postgres, redis_url, standin_qdrant, tmp_path, lite_embedder):
    database_url = private_postgres.create_database("endodoc")
    yield from make_stack(database_url, redis_url, standin_qdrant.url, tmp_path, lite_embedder)


@pytest.fixture
def api(stack):
    yield from open_site_client(stack)


def assert_database_unavailable(response) -> None:
    """Check for the API's JSON 503 that names the database and what to check."""
    assert response.status_code == 503, response.text
    error = response.json()["error"]
    assert error["code"] == "database_unavailable"
    assert "ENDODOC_DATABASE_URL" in error["message"]


def test_postgres_restart_completes_each_image_once(stack, api, private_postgres, labeled_images):
    runtime = stack.runtime
    seed_gallery(runtime, labeled_images)
    worker = stack.start_worker()
    paths = query_images(labeled_images, 40)

    first = upload_images(api, paths[:32])

    def batch_in_flight() -> bool:
        return any(
            image.status == ImageStatus.QUEUED and image.attempts >= 1
            for image in images_by_id(runtime, first).values()
        )

    wait_for(batch_in_flight, SERVICE_TIMEOUT_S, "the worker to claim a batch", stack.logs, interval_s=0.02)
    private_postgres.stop("immediate")
    clock = Stopwatch("postgres")

    # Every route that reads the catalog returns a JSON 503, the key lookup of an upload included.
    assert_database_unavailable(api.coverage())
    assert_database_unavailable(api.upload(paths[32:33]))
    assert_database_unavailable(api.client.get(f"/v1/procedures/{api.procedure_id}", headers=api.headers))
    assert api.client.get("/healthz").status_code == 200
    clock.lap("API answered 503 while PostgreSQL was down")

    # The worker defers the batch instead of failing its images or exiting, and a retry that runs
    # while the server is still down is deferred again.
    wait_for(lambda: "retries=1" in stack.worker_log(), SERVICE_TIMEOUT_S, "the worker to retry a task twice",
             stack.logs)
    assert worker.poll() is None
    clock.lap("worker scheduled a retry")

    private_postgres.start()
    clock.lap("PostgreSQL restarted")
    wait_for(lambda: all_embedded(runtime, first), SERVICE_TIMEOUT_S, "the 32 images to be embedded after the restart",
             stack.logs)
    clock.lap("all 32 images embedded by retries")

    # The API's connection pool recovers by itself, and new uploads go through.
    second = upload_images(api, paths[32:40])
    wait_for(lambda: all_embedded(runtime, second), SERVICE_TIMEOUT_S, "the upload after the restart to be embedded",
             stack.logs)
    assert worker.poll() is None
    assert "embedding_failed" not in stack.worker_log()

    accepted = first + second
    assert_embedded_exactly_once(runtime, api.procedure_id, accepted)
    # An attempt counted just before the crash cannot be taken back, so an image may show two.
    assert {image.attempts for image in images_by_id(runtime, accepted).values()} <= {1, 2}


# Two requests wait 3 s each for the connect timeout. Without one, each waited about 130 s
# for the kernel to give up on the frozen server, which this bound turns into a failure.
@pytest.mark.timeout(60)
def test_unresponsive_postgres_returns_503(stack, api, private_postgres):
    # A restart drops the API's pooled connections, so the next request must open a new one.
    private_postgres.stop("immediate")
    private_postgres.start()
    private_postgres.freeze()
    try:
        # Each request opens a new connection, which fails after the connect timeout.
        assert_database_unavailable(api.coverage())
        assert_database_unavailable(api.client.get(f"/v1/procedures/{api.procedure_id}", headers=api.headers))
    finally:
        private_postgres.thaw()

    coverage = api.coverage()
    assert coverage.status_code == 200, coverage.text
    assert coverage.json()["images"] == {"queued": 0, "embedded": 0, "failed": 0}
