"""Keys: every route but health needs one, and a site key never reaches another site's data."""

from __future__ import annotations

import uuid

from services.catalog.keys import hash_secret
from services.catalog.models import ApiKey
from services.db import unit_of_work
from tests.api.conftest import ADMIN, procedure_body, upload_files
from tests.conftest import class_images


def test_healthz_needs_no_key(app_client):
    response = app_client.get("/healthz")
    assert response.status_code == 200


def test_missing_key_is_401(app_client):
    response = app_client.get(f"/v1/procedures/{uuid.uuid4()}")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthorized"
    assert "Authorization: Bearer" in response.json()["error"]["message"]


def test_key_without_bearer_prefix(app_client, site_a):
    response = app_client.get("/v1/procedures", headers={"Authorization": site_a.key})
    assert response.status_code == 401
    message = response.json()["error"]["message"]
    assert "lacks the `Bearer ` prefix" in message
    assert site_a.key not in message


def test_wrong_key_is_401(app_client):
    response = app_client.get("/v1/procedures", headers={"Authorization": "Bearer edk_not-a-real-key"})
    assert response.status_code == 401
    assert "invalid or revoked" in response.json()["error"]["message"]


def test_every_v1_route_needs_a_key(app_client):
    schema = app_client.get("/openapi.json").json()
    some_id = str(uuid.uuid4())
    for path, operations in schema["paths"].items():
        if path == "/healthz":
            continue
        url = path.replace("{procedure_id}", some_id).replace("{image_id}", some_id)
        url = url.replace("{site_id}", some_id).replace("{key_id}", some_id)
        for method in operations:
            response = app_client.request(method.upper(), url)
            assert response.status_code == 401, f"{method.upper()} {path} answered {response.status_code}"


def test_key_is_stored_only_as_hash(app_client, runtime, site_a):
    with unit_of_work(runtime.sessions) as session:
        keys = session.query(ApiKey).all()
    assert len(keys) == 1
    assert keys[0].secret_sha256 == hash_secret(site_a.key)
    assert site_a.key not in {keys[0].prefix, keys[0].name, keys[0].secret_sha256}


def test_revoked_key_is_401(app_client, site_a):
    keys = app_client.get(f"/v1/sites/{site_a.id}/api-keys", headers=ADMIN).json()
    assert "secret" not in keys[0]
    revoked = app_client.delete(f"/v1/sites/{site_a.id}/api-keys/{keys[0]['id']}", headers=ADMIN)
    assert revoked.status_code == 200
    assert revoked.json()["revoked_at"] is not None
    response = app_client.get("/v1/procedures", headers=site_a.headers)
    assert response.status_code == 401


def test_site_key_cannot_use_admin_routes(app_client, site_a):
    for response in (
        app_client.post("/v1/sites", json={"slug": "rogue", "name": "Rogue"}, headers=site_a.headers),
        app_client.get("/v1/sites", headers=site_a.headers),
        app_client.post(f"/v1/sites/{site_a.id}/api-keys", json={"name": "x"}, headers=site_a.headers),
        app_client.get(f"/v1/sites/{site_a.id}/api-keys", headers=site_a.headers),
    ):
        assert response.status_code == 403
        assert response.json()["error"]["code"] == "forbidden"


def test_site_key_gets_403_on_other_sites_data(app_client, queue, site_a, site_b, labeled_images):
    procedure = app_client.post("/v1/procedures", json=procedure_body("B-1"), headers=site_b.headers).json()
    upload = app_client.post(
        f"/v1/procedures/{procedure['id']}/images",
        files=upload_files(class_images(labeled_images, "polyp", 7)[6:7]),
        headers=site_b.headers,
    )
    queue.wait_idle(timeout_s=120)
    image_id = upload.json()["images"][0]["image_id"]
    procedure_id = procedure["id"]

    attempts = {
        "get procedure": app_client.get(f"/v1/procedures/{procedure_id}", headers=site_a.headers),
        "coverage": app_client.get(f"/v1/procedures/{procedure_id}/coverage", headers=site_a.headers),
        "list images": app_client.get(f"/v1/procedures/{procedure_id}/images", headers=site_a.headers),
        "upload": app_client.post(
            f"/v1/procedures/{procedure_id}/images",
            files=upload_files(class_images(labeled_images, "polyp", 8)[7:8]),
            headers=site_a.headers,
        ),
        "get image": app_client.get(f"/v1/images/{image_id}", headers=site_a.headers),
        "thumbnail": app_client.get(f"/v1/images/{image_id}/thumbnail", headers=site_a.headers),
        "review": app_client.post(
            f"/v1/images/{image_id}/reviews", json={"action": "confirm", "reviewer": "x"}, headers=site_a.headers
        ),
        "promote": app_client.post(f"/v1/images/{image_id}/promote", headers=site_a.headers),
        "site": app_client.get(f"/v1/sites/{site_b.id}", headers=site_a.headers),
        "site coverage": app_client.get(f"/v1/sites/{site_b.id}/coverage", headers=site_a.headers),
        "list procedures": app_client.get(f"/v1/procedures?site_id={site_b.id}", headers=site_a.headers),
        "search by image": app_client.post("/v1/search", json={"image_id": image_id}, headers=site_a.headers),
        "create at site": app_client.post(
            "/v1/procedures", json=procedure_body("A-1", site=site_b.slug), headers=site_a.headers
        ),
    }
    for name, response in attempts.items():
        assert response.status_code == 403, f"{name} answered {response.status_code}: {response.text}"
        assert response.json()["error"]["code"] == "forbidden"

    images = app_client.get(f"/v1/procedures/{procedure_id}/images", headers=site_b.headers).json()
    assert images["total"] == 1


def test_site_key_lists_only_own_procedures(app_client, site_a, site_b):
    app_client.post("/v1/procedures", json=procedure_body("A-1"), headers=site_a.headers)
    app_client.post("/v1/procedures", json=procedure_body("B-1"), headers=site_b.headers)
    listed = app_client.get("/v1/procedures", headers=site_a.headers).json()
    assert [item["external_id"] for item in listed["items"]] == ["A-1"]


def test_admin_reads_any_site_but_must_name_it(app_client, site_a):
    app_client.post("/v1/procedures", json=procedure_body("A-1"), headers=site_a.headers)
    unnamed = app_client.get("/v1/procedures", headers=ADMIN)
    assert unnamed.status_code == 422
    named = app_client.get(f"/v1/procedures?site_id={site_a.id}", headers=ADMIN)
    assert named.status_code == 200
    assert named.json()["total"] == 1


def test_admin_creates_procedure_only_at_existing_site(app_client, site_a):
    unknown = app_client.post("/v1/procedures", json=procedure_body(site="no-such-site"), headers=ADMIN)
    assert unknown.status_code == 404
    created = app_client.post("/v1/procedures", json=procedure_body(site=site_a.slug), headers=ADMIN)
    assert created.status_code == 201
    assert created.json()["site_id"] == site_a.id
