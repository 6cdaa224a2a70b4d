"""Redis killed and restarted: queued tasks are lost, uploads are still accepted, reconciliation recovers.

The private Redis keeps nothing on disk, so a restart comes back empty, like a Redis
without persistence after a crash. The images stay `queued` in PostgreSQL, and
`endodoc reconcile` enqueues them again.
"""

from __future__ import annotations

import threading
import uuid

import pytest
import redis

from tests.faults.stack import (
    SERVICE_TIMEOUT_S,
    Stopwatch,
    all_embedded,
    assert_embedded_exactly_once,
    images_by_id,
    make_stack,
    open_site_client,
    query_images,
    queued_count,
    run_reconcile,
    seed_gallery,
    upload_images,
    wait_for,
)

pytestmark = [
    pytest.mark.faults,
    pytest.mark.postgres,
    pytest.mark.timeout(300),
    pytest.mark.filterwarnings("ignore:Payload indexes have no effect:UserWarning"),
]


@pytest.fixture
def stack(postgres_url, private_redis, standin_qdrant, tmp_path, lite_embedder):
    yield from make_stack(postgres_url, private_redis.url(), standin_qdrant.url, tmp_path, lite_embedder)


@pytest.fixture
def api(stack):
    yield from open_site_client(stack)


def upload_in_background(api, paths) -> tuple[threading.Thread, list]:
    """Start an upload in another thread; the response lands in the returned list."""
    responses: list = []
    thread = threading.Thread(target=lambda: responses.append(api.upload(paths)), daemon=True)
    thread.start()
    return thread, responses


def test_redis_restart_recovers_lost_queue(stack, api, private_redis, labeled_images):
    runtime = stack.runtime
    seed_gallery(runtime, labeled_images)
    broker = redis.Redis.from_url(private_redis.url(), socket_connect_timeout=3)
    paths = query_images(labeled_images, 48)

    # No worker runs yet, so both tasks of the first upload wait in the `embed` list.
    queued_in_redis = upload_images(api, paths[:32])
    assert broker.llen("embed") == 2
    broker.close()

    private_redis.stop()
    clock = Stopwatch("redis")

    # While Redis is down, an upload is still stored and accepted, but its task cannot be sent.
    thread, responses = upload_in_background(api, paths[32:40])
    wait_for(lambda: queued_count(runtime, api.procedure_id) == 40, SERVICE_TIMEOUT_S,
             "the upload during the outage to be stored")
    # The API keeps serving other requests while the upload waits for the broker.
    health = api.client.get("/healthz")
    assert health.status_code == 200
    assert thread.is_alive()
    thread.join(timeout=SERVICE_TIMEOUT_S)
    assert not thread.is_alive()
    [during_outage] = responses
    assert during_outage.status_code == 202, during_outage.text
    accepted_while_down = [uuid.UUID(image["image_id"]) for image in during_outage.json()["images"]]
    assert [image["status"] for image in during_outage.json()["images"]] == ["queued"] * 8
    clock.lap("upload accepted while Redis was down")

    coverage = api.coverage()
    assert coverage.status_code == 200, coverage.text
    assert coverage.json()["images"] == {"queued": 40, "embedded": 0, "failed": 0}

    private_redis.start()
    clock.lap("Redis restarted")
    broker = redis.Redis.from_url(private_redis.url(), socket_connect_timeout=3)
    assert broker.llen("embed") == 0

    stack.start_worker()
    clock.lap("worker ready")
    # The lost tasks never come back, so reconciliation enqueues every image queued for longer than 1 s.
    report = run_reconcile(stack.stack, {"ENDODOC_RECONCILE_QUEUED_AFTER_S": "1"})
    assert report["stuck_queued"] == 40
    assert report["requeued"] == 40
    assert report["exhausted"] == 0
    clock.lap("reconcile enqueued the lost images")

    all_ids = queued_in_redis + accepted_while_down
    wait_for(lambda: all_embedded(runtime, all_ids), SERVICE_TIMEOUT_S, "the 40 lost images to be embedded",
             stack.logs)
    clock.lap("all 40 lost images embedded")

    # A worker connected during a Redis restart reconnects and takes new tasks without help.
    private_redis.stop()
    private_redis.start()
    restarted = Stopwatch("redis-reconnect")
    after_restart = upload_images(api, paths[40:48])
    wait_for(lambda: all_embedded(runtime, after_restart), SERVICE_TIMEOUT_S,
             "the worker to reconnect and embed 8 new images", stack.logs)
    restarted.lap("worker reconnected and embedded the new upload")
    assert stack.stack.workers[0].poll() is None

    assert_embedded_exactly_once(runtime, api.procedure_id, all_ids + after_restart)
    assert {image.attempts for image in images_by_id(runtime, all_ids + after_restart).values()} == {1}
    assert broker.llen("embed") == 0
    broker.close()

