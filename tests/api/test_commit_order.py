"""Writes of a request are committed before its response reaches the client.

A client that gets `201` for a new procedure may upload into it at once, on another
connection. If the commit ran after the response was sent, that upload could find no
procedure (`404`), and a commit that failed would leave the client with a `201` for a write
that never happened.
"""

from __future__ import annotations

from fastapi.testclient import TestClient
from sqlalchemy import func, select

from services.catalog.models import ImageReview, Procedure
from services.db import unit_of_work
from tests.api.conftest import procedure_body, upload_files
from tests.conftest import class_images


def observing_app(app, runtime, table, seen: list[int]):
    """Wrap `app` so that, when a response starts, a separate session counts the rows of `table`."""

    async def wrapped(scope, receive, send):
        async def send_and_count(message):
            if message["type"] == "http.response.start" and scope["method"] == "POST":
                with unit_of_work(runtime.sessions) as session:
                    seen.append(session.scalar(select(func.count()).select_from(table)))
            await send(message)

        await app(scope, receive, send_and_count)

    return wrapped


def test_new_procedure_visible_when_response_starts(client, runtime):
    seen: list[int] = []
    observer = TestClient(observing_app(client.app, runtime, Procedure, seen), headers=client.headers)

    response = observer.post("/v1/procedures", json=procedure_body("COL-COMMIT"))

    assert response.status_code == 201, response.text
    assert seen == [1]


def test_new_review_visible_when_response_starts(client, runtime, queue, labeled_images):
    procedure = client.post("/v1/procedures", json=procedure_body("COL-REVIEW")).json()
    upload = client.post(
        f"/v1/procedures/{procedure['id']}/images", files=upload_files(class_images(labeled_images, "polyp", 1))
    )
    image_id = upload.json()["images"][0]["image_id"]
    queue.wait_idle(timeout_s=300)
    seen: list[int] = []
    observer = TestClient(observing_app(client.app, runtime, ImageReview, seen), headers=client.headers)

    response = observer.post(f"/v1/images/{image_id}/reviews", json={"action": "confirm", "reviewer": "dr.test"})

    assert response.status_code == 201, response.text
    assert seen == [1]
