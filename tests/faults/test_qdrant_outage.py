"""Qdrant unavailable for a while: the worker retries, search returns 503 and coverage still works.

The Qdrant stand-in is stopped and started again on the same port with the same storage
folder, so the points written before the outage are still there after it.
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
    pytest.mark.postgres,
    pytest.mark.redis,
    pytest.mark.timeout(300),
    pytest.mark.filterwarnings("ignore:Payload indexes have no effect:UserWarning"),
]


@pytest.fixture
def stack(postgres_url, redis_url, standin_qdrant, tmp_path, lite_embedder):
    yield from make_stack(postgres_url, redis_url, standin_qdrant.url, tmp_path, lite_embedder)


@pytest.fixture
def api(stack):
    yield from open_site_client(stack)


def test_qdrant_outage_embeds_each_image_once(stack, api, standin_qdrant, labeled_images):
    runtime = stack.runtime
    seed_gallery(runtime, labeled_images)
    worker = stack.start_worker()
    paths = query_images(labeled_images, 32)

    before = upload_images(api, paths[:16])
    wait_for(lambda: all_embedded(runtime, before), SERVICE_TIMEOUT_S, "the first upload to be embedded",
             stack.logs)

    standin_qdrant.stop()
    clock = Stopwatch("qdrant")

    # Uploads need only PostgreSQL and Redis, so they are still accepted.
    during = upload_images(api, paths[16:32])
    clock.lap("upload accepted while Qdrant was down")

    # Search needs Qdrant: a JSON 503 that names the server and the fix.
    search = api.search(before[0])
    assert search.status_code == 503, search.text
    error = search.json()["error"]
    assert error["code"] == "vector_store_unavailable"
    assert standin_qdrant.url in error["message"]
    assert "ENDODOC_QDRANT_URL" in error["message"]

    # The worker defers the batch with retries, and a retry that runs during the outage is deferred again.
    wait_for(lambda: "retries=1" in stack.worker_log(), SERVICE_TIMEOUT_S, "the worker to retry a task twice",
             stack.logs)
    assert worker.poll() is None
    clock.lap("worker retried twice")

    # Coverage reads only the catalog, so it still returns the report, with the new images pending.
    coverage = api.coverage()
    assert coverage.status_code == 200, coverage.text
    assert coverage.json()["images"] == {"queued": 16, "embedded": 16, "failed": 0}
    assert {image.status for image in images_by_id(runtime, during).values()} == {ImageStatus.QUEUED}

    standin_qdrant.start()
    clock.lap("Qdrant restarted")
    wait_for(lambda: all_embedded(runtime, during), SERVICE_TIMEOUT_S, "the retries to embed the 16 images",
             stack.logs)
    clock.lap("all 16 images embedded by retries")

    search = api.search(before[0])
    assert search.status_code == 200, search.text
    assert worker.poll() is None
    assert "embedding_failed" not in stack.worker_log()

    accepted = before + during
    assert_embedded_exactly_once(runtime, api.procedure_id, accepted)
    # Each deferred attempt was taken back, so every image shows the one attempt that succeeded.
    assert {image.attempts for image in images_by_id(runtime, accepted).values()} == {1}
