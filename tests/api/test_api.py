"""The HTTP API on the embedded stack, with uploads embedded by the in-process queue."""

from __future__ import annotations

import uuid

from fastapi.testclient import TestClient

from services.api.app import create_app
from services.ingest.dispatch import run_embedding
from tests.api.conftest import procedure_body, upload_files
from tests.conftest import class_images

PROCEDURE = procedure_body()


def test_healthz(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_upload_then_coverage_documents_cecum(client, queue, labeled_images):
    procedure = client.post("/v1/procedures", json=PROCEDURE)
    assert procedure.status_code == 201
    procedure_id = procedure.json()["id"]
    paths = class_images(labeled_images, "normal-cecum", 9)[6:9] + class_images(labeled_images, "polyp", 8)[6:8]

    upload = client.post(f"/v1/procedures/{procedure_id}/images", files=upload_files(paths))
    assert upload.status_code == 202
    images = upload.json()["images"]
    assert [image["status"] for image in images] == ["queued"] * 5

    queue.wait_idle(timeout_s=120)
    coverage = client.get(f"/v1/procedures/{procedure_id}/coverage")
    assert coverage.status_code == 200
    body = coverage.json()
    assert body["landmarks"][0]["code"] == "normal-cecum"
    assert body["landmarks"][0]["status"] == "documented"
    assert body["landmarks"][0]["evidence"]
    assert body["coverage"] == 1.0
    assert body["images"] == {"queued": 0, "embedded": 5, "failed": 0}

    image = client.get(f"/v1/images/{images[0]['image_id']}")
    assert image.status_code == 200
    assert image.json()["status"] == "embedded"
    assert image.json()["prediction"]["landmark_code"] == "normal-cecum"


class HeldQueue:
    """Keeps enqueued image ids until the test runs the embedding itself."""

    def __init__(self) -> None:
        self.image_ids = []

    def enqueue(self, image_ids) -> None:
        self.image_ids.extend(image_ids)

    def close(self) -> None:
        pass


def test_coverage_is_pending_until_embedded(settings, runtime, client, site_a, labeled_images):
    held_queue = HeldQueue()
    with TestClient(create_app(settings, runtime=runtime, queue=held_queue), headers=site_a.headers) as held_client:
        procedure_id = held_client.post("/v1/procedures", json=PROCEDURE).json()["id"]
        paths = class_images(labeled_images, "polyp", 7)[6:7]
        held_client.post(f"/v1/procedures/{procedure_id}/images", files=upload_files(paths))
        pending = held_client.get(f"/v1/procedures/{procedure_id}/coverage").json()
        run_embedding(runtime, held_queue.image_ids)
        done = held_client.get(f"/v1/procedures/{procedure_id}/coverage").json()

    assert len(held_queue.image_ids) == 1
    assert pending["landmarks"][0]["status"] == "pending"
    assert done["landmarks"][0]["status"] == "missing"


def test_unreadable_file_is_422_naming_file(client):
    procedure_id = client.post("/v1/procedures", json=PROCEDURE).json()["id"]
    response = client.post(
        f"/v1/procedures/{procedure_id}/images",
        files=[("files", ("scan-042.jpg", b"<html><body>hello</body></html>", "image/jpeg"))],
    )
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "invalid_image"
    assert "scan-042.jpg" in error["message"]
    assert error["details"]["images"][0]["status"] == "failed"


def test_mixed_batch_accepts_good_and_records_bad(client, queue, labeled_images):
    procedure_id = client.post("/v1/procedures", json=PROCEDURE).json()["id"]
    files = upload_files(class_images(labeled_images, "polyp", 1)) + [("files", ("empty.png", b"", "image/png"))]
    response = client.post(f"/v1/procedures/{procedure_id}/images", files=files)
    assert response.status_code == 202
    statuses = [image["status"] for image in response.json()["images"]]
    assert statuses == ["queued", "failed"]
    queue.wait_idle(timeout_s=120)
    failed = client.get(f"/v1/images/{response.json()['images'][1]['image_id']}").json()
    assert failed["status"] == "failed"
    assert failed["error"]


def test_unknown_procedure_is_404(client):
    missing = uuid.uuid4()
    for response in (
        client.get(f"/v1/procedures/{missing}/coverage"),
        client.get(f"/v1/procedures/{missing}"),
        client.post(f"/v1/procedures/{missing}/images", files=[("files", ("a.jpg", b"x", "image/jpeg"))]),
        client.get(f"/v1/images/{missing}"),
    ):
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "not_found"
        assert str(missing) in response.json()["error"]["message"]


def test_malformed_id_is_422(client):
    response = client.get("/v1/procedures/not-a-uuid/coverage")
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid_request"


def test_unknown_landmark_set_is_422(client):
    response = client.post("/v1/procedures", json={**PROCEDURE, "landmark_set": "nope"})
    assert response.status_code == 422
    assert "'nope'" in response.json()["error"]["message"]



def test_missing_weights_is_503_json(settings, labeled_images):
    """A runtime whose model cannot load returns a JSON 503 for coverage, not a bare 500."""
    from pydantic import SecretStr

    from services.runtime import Runtime
    from services.schema import ensure_schema
    from tests.api.conftest import ADMIN, ADMIN_KEY, procedure_body

    settings.admin_api_key = SecretStr(ADMIN_KEY)
    settings.model.profile = "dinov2"
    settings.model.dinov2_weights = settings.data_dir / "missing-dinov2.pth"
    broken = Runtime(settings)
    ensure_schema(broken)
    with TestClient(create_app(settings, runtime=broken, queue=HeldQueue())) as client:
        site = client.post("/v1/sites", json={"slug": "weights", "name": "Weights"}, headers=ADMIN).json()
        key = client.post(f"/v1/sites/{site['id']}/api-keys", json={"name": "t"}, headers=ADMIN).json()["secret"]
        headers = {"Authorization": f"Bearer {key}"}
        procedure = client.post("/v1/procedures", json=procedure_body(), headers=headers).json()
        response = client.get(f"/v1/procedures/{procedure['id']}/coverage", headers=headers)
    broken.close()

    assert response.status_code == 503
    assert response.json()["error"]["code"] == "model_unavailable"
    assert "missing-dinov2.pth" in response.json()["error"]["message"]
