"""Similar-image search: filtered Qdrant search joined with procedures, confined to the caller's site."""

from __future__ import annotations

import pytest

from tests.api.conftest import ADMIN, procedure_body, upload_files
from tests.conftest import class_images


@pytest.fixture
def two_sites(app_client, queue, site_a, site_b, labeled_images):
    """Give site A two procedures and site B one; all images are embedded when this returns."""
    cecum = class_images(labeled_images, "normal-cecum", 12)[6:12]
    polyp = class_images(labeled_images, "polyp", 12)[6:12]
    uploads = {
        ("a", "A-COL-1", "2026-11-02T09:00:00Z"): cecum[0:2] + polyp[0:2],
        ("a", "A-COL-2", "2026-11-20T09:00:00Z"): cecum[2:4] + polyp[2:4],
        ("b", "B-COL-1", "2026-11-02T09:00:00Z"): cecum[4:6] + polyp[4:6],
    }
    sites = {"a": site_a, "b": site_b}
    created = {}
    for (site, external_id, performed_at), paths in uploads.items():
        headers = sites[site].headers
        procedure = app_client.post(
            "/v1/procedures", json=procedure_body(external_id, performed_at=performed_at), headers=headers
        ).json()
        images = app_client.post(
            f"/v1/procedures/{procedure['id']}/images", files=upload_files(paths), headers=headers
        ).json()["images"]
        created[external_id] = {"procedure": procedure, "images": [image["image_id"] for image in images]}
    queue.wait_idle(timeout_s=300)
    return created


def test_search_never_returns_other_sites_images(app_client, two_sites, site_a, labeled_images):
    site_b_images = set(two_sites["B-COL-1"]["images"])
    site_a_images = set(two_sites["A-COL-1"]["images"]) | set(two_sites["A-COL-2"]["images"])
    # Site B's own file as the query: its nearest neighbour overall is site B's copy.
    query_path = class_images(labeled_images, "normal-cecum", 12)[10]
    by_file = app_client.post(
        "/v1/search",
        files={"file": (query_path.name, query_path.read_bytes(), "image/jpeg")},
        data={"filters": '{"limit": 100}'},
        headers=site_a.headers,
    )
    assert by_file.status_code == 200, by_file.text
    by_image = app_client.post(
        "/v1/search", json={"image_id": two_sites["A-COL-1"]["images"][0], "limit": 100}, headers=site_a.headers
    )
    assert by_image.status_code == 200

    for response in (by_file, by_image):
        returned = {hit["image_id"] for hit in response.json()["hits"]}
        assert returned
        assert returned.isdisjoint(site_b_images)
        assert returned <= site_a_images


def test_search_naming_other_site_is_403(app_client, two_sites, site_a, site_b):
    response = app_client.post(
        "/v1/search",
        json={"image_id": two_sites["A-COL-1"]["images"][0], "site_id": site_b.id},
        headers=site_a.headers,
    )
    assert response.status_code == 403


def test_search_by_file_finds_same_image_first(app_client, two_sites, site_a, labeled_images):
    path = class_images(labeled_images, "polyp", 12)[8]
    response = app_client.post(
        "/v1/search", files={"file": (path.name, path.read_bytes(), "image/jpeg")}, headers=site_a.headers
    )
    assert response.status_code == 200
    top = response.json()["hits"][0]
    assert top["image_id"] == two_sites["A-COL-2"]["images"][2]
    assert top["similarity"] > 0.99
    assert top["procedure"]["external_id"] == "A-COL-2"
    assert top["thumbnail_url"] == f"/v1/images/{top['image_id']}/thumbnail"


def test_search_by_image_excludes_itself(app_client, two_sites, site_a):
    query = two_sites["A-COL-1"]["images"][0]
    hits = app_client.post("/v1/search", json={"image_id": query}, headers=site_a.headers).json()["hits"]
    assert query not in {hit["image_id"] for hit in hits}
    assert len(hits) == 7


def test_search_filters_by_date_procedure_and_landmark(app_client, two_sites, site_a):
    query = two_sites["A-COL-1"]["images"][0]
    late = app_client.post(
        "/v1/search",
        json={"image_id": query, "performed_from": "2026-11-10T00:00:00Z", "limit": 50},
        headers=site_a.headers,
    ).json()["hits"]
    assert {hit["procedure"]["external_id"] for hit in late} == {"A-COL-2"}

    one_procedure = app_client.post(
        "/v1/search",
        json={"image_id": query, "procedure_id": two_sites["A-COL-1"]["procedure"]["id"]},
        headers=site_a.headers,
    ).json()["hits"]
    assert {hit["procedure"]["external_id"] for hit in one_procedure} == {"A-COL-1"}

    polyps = app_client.post(
        "/v1/search", json={"image_id": query, "landmark": "polyp", "limit": 50}, headers=site_a.headers
    ).json()["hits"]
    assert polyps
    assert {hit["landmark_code"] for hit in polyps} == {"polyp"}

    egd = app_client.post("/v1/search", json={"image_id": query, "kind": "egd"}, headers=site_a.headers)
    assert egd.status_code == 200
    assert egd.json()["hits"] == []


def test_admin_search_needs_site(app_client, two_sites, site_b, labeled_images):
    path = class_images(labeled_images, "polyp", 1)[0]
    file = {"file": (path.name, path.read_bytes(), "image/jpeg")}
    unnamed = app_client.post("/v1/search", files=file, headers=ADMIN)
    assert unnamed.status_code == 422
    named = app_client.post(
        "/v1/search", files=file, data={"filters": f'{{"site_id": "{site_b.id}"}}'}, headers=ADMIN
    )
    assert named.status_code == 200
    assert {hit["procedure"]["external_id"] for hit in named.json()["hits"]} == {"B-COL-1"}


def test_search_rejects_invalid_requests(app_client, two_sites, site_a):
    query = two_sites["A-COL-1"]["images"][0]
    cases = {
        "no query": app_client.post("/v1/search", json={"limit": 5}, headers=site_a.headers),
        "bad limit": app_client.post("/v1/search", json={"image_id": query, "limit": 0}, headers=site_a.headers),
        "unknown landmark": app_client.post(
            "/v1/search", json={"image_id": query, "landmark": "nose"}, headers=site_a.headers
        ),
        "bad json": app_client.post(
            "/v1/search", content=b"{", headers={**site_a.headers, "content-type": "application/json"}
        ),
        "not an image": app_client.post(
            "/v1/search", files={"file": ("x.jpg", b"hello", "image/jpeg")}, headers=site_a.headers
        ),
    }
    for name, response in cases.items():
        assert response.status_code == 422, f"{name}: {response.status_code} {response.text}"
        assert set(response.json()["error"]) == {"code", "message", "details"}


def test_search_unknown_image_is_404(app_client, two_sites, site_a):
    response = app_client.post(
        "/v1/search", json={"image_id": "00000000-0000-4000-8000-000000000000"}, headers=site_a.headers
    )
    assert response.status_code == 404
