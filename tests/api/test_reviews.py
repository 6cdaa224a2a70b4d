"""Clinician review: confirm or correct a landmark, and promote reviewed images into the gallery."""

from __future__ import annotations

import io

from PIL import Image, ImageOps

from tests.api.conftest import procedure_body
from tests.conftest import class_images


def upload_one(client, headers, external_id, name, data, queue):
    procedure = client.post("/v1/procedures", json=procedure_body(external_id), headers=headers).json()
    response = client.post(
        f"/v1/procedures/{procedure['id']}/images", files=[("files", (name, data, "image/jpeg"))], headers=headers
    )
    assert response.status_code == 202, response.text
    queue.wait_idle(timeout_s=120)
    image_id = response.json()["images"][0]["image_id"]
    return procedure["id"], client.get(f"/v1/images/{image_id}", headers=headers).json()


def mirrored_jpeg(path) -> bytes:
    """Return the image mirrored and re-encoded: other bytes, nearly the same embedding."""
    output = io.BytesIO()
    ImageOps.mirror(Image.open(path).convert("RGB")).save(output, "JPEG", quality=92)
    return output.getvalue()


def test_confirm_records_who_and_when(client, queue, site_a, labeled_images):
    path = class_images(labeled_images, "polyp", 7)[6]
    _, image = upload_one(client, site_a.headers, "COL-1", path.name, path.read_bytes(), queue)
    predicted = image["prediction"]["landmark_code"]

    review = client.post(
        f"/v1/images/{image['id']}/reviews", json={"action": "confirm", "reviewer": "dr.hansen"}
    )
    assert review.status_code == 201
    body = review.json()
    assert body["landmark_code"] == predicted
    assert body["predicted_code"] == predicted
    assert body["reviewer"] == "dr.hansen"
    assert body["created_at"]
    assert body["api_key_id"]
    assert client.get(f"/v1/images/{image['id']}").json()["review"]["id"] == body["id"]


def test_correction_history_is_kept(client, queue, site_a, labeled_images):
    path = class_images(labeled_images, "polyp", 7)[6]
    _, image = upload_one(client, site_a.headers, "COL-1", path.name, path.read_bytes(), queue)
    url = f"/v1/images/{image['id']}/reviews"
    client.post(url, json={"action": "correct", "landmark_code": "bbps-2-3", "reviewer": "nurse.berg"})
    client.post(url, json={"action": "correct", "landmark_code": "polyp", "reviewer": "dr.hansen", "comment": "polyp at 4 o'clock"})

    history = client.get(url).json()
    assert [item["landmark_code"] for item in history] == ["polyp", "bbps-2-3"]
    assert [item["reviewer"] for item in history] == ["dr.hansen", "nurse.berg"]
    assert history[0]["comment"] == "polyp at 4 o'clock"


def test_invalid_reviews_are_422(client, queue, site_a, labeled_images):
    path = class_images(labeled_images, "polyp", 7)[6]
    _, image = upload_one(client, site_a.headers, "COL-1", path.name, path.read_bytes(), queue)
    url = f"/v1/images/{image['id']}/reviews"
    other = "normal-cecum" if image["prediction"]["landmark_code"] != "normal-cecum" else "polyp"
    cases = {
        "unknown code": {"action": "correct", "landmark_code": "z-line", "reviewer": "x"},
        "correction without code": {"action": "correct", "reviewer": "x"},
        "confirm of another code": {"action": "confirm", "landmark_code": other, "reviewer": "x"},
        "unknown action": {"action": "approve", "reviewer": "x"},
        "no reviewer": {"action": "confirm"},
    }
    for name, body in cases.items():
        response = client.post(url, json=body)
        assert response.status_code == 422, f"{name}: {response.status_code} {response.text}"
    assert client.get(url).json() == []


def test_promote_without_review_is_422(client, queue, site_a, labeled_images):
    path = class_images(labeled_images, "polyp", 7)[6]
    _, image = upload_one(client, site_a.headers, "COL-1", path.name, path.read_bytes(), queue)
    response = client.post(f"/v1/images/{image['id']}/promote")
    assert response.status_code == 422
    assert "no review" in response.json()["error"]["message"]


def test_promotion_changes_later_predictions_of_that_site_only(
    app_client, queue, site_a, site_b, labeled_images
):
    # The shared gallery has only cecum and polyp references, so a bowel-preparation image
    # cannot be labeled bbps-2-3 until a reviewed one is promoted into site A's gallery.
    path = class_images(labeled_images, "bbps-2-3", 1)[0]
    _, image = upload_one(app_client, site_a.headers, "A-1", path.name, path.read_bytes(), queue)
    assert image["prediction"]["landmark_code"] != "bbps-2-3"
    reviewed = app_client.post(
        f"/v1/images/{image['id']}/reviews",
        json={"action": "correct", "landmark_code": "bbps-2-3", "reviewer": "dr.hansen"},
        headers=site_a.headers,
    )
    assert reviewed.status_code == 201

    promoted = app_client.post(f"/v1/images/{image['id']}/promote", headers=site_a.headers)
    assert promoted.status_code == 200, promoted.text
    assert promoted.json()["label"] == "bbps-2-3"
    assert promoted.json()["site_id"] == site_a.id
    again = app_client.post(f"/v1/images/{image['id']}/promote", headers=site_a.headers)
    assert again.json()["reference_id"] == promoted.json()["reference_id"]

    similar = mirrored_jpeg(path)
    _, at_a = upload_one(app_client, site_a.headers, "A-2", "mirrored.jpg", similar, queue)
    _, at_b = upload_one(app_client, site_b.headers, "B-1", "mirrored.jpg", similar, queue)
    assert at_a["prediction"]["landmark_code"] == "bbps-2-3"
    assert promoted.json()["reference_id"] in {item["reference_id"] for item in at_a["prediction"]["evidence"]}
    assert at_b["prediction"]["landmark_code"] != "bbps-2-3"
