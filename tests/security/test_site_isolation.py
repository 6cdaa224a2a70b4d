"""Site isolation: site A's key reaches none of site B's resources on any route, and no list or search shows them.

Both sites uploaded the same polyp image, and site B promoted its copy into its own gallery
before site A's images were embedded. A leak through search or k-NN evidence would therefore
be an exact match, not a near miss.
"""

from __future__ import annotations

import io

from PIL import Image

from tests.api.conftest import procedure_body, upload_files
from tests.security.routes import fill_path, keyed_routes

def cross_site_requests(site_a, site_b, shared_image) -> dict[tuple[str, str], list[dict]]:
    """Return, for every keyed route, the requests with which site A's key tries to reach site B's resources."""
    b = site_b.path_values()
    a_image = site_a.image_ids[0]
    return {
        ("POST", "/v1/sites"): [{"json": {"slug": "site-c", "name": "Site C"}}],
        ("GET", "/v1/sites"): [{}],
        ("GET", "/v1/sites/{site_id}"): [{}],
        ("POST", "/v1/sites/{site_id}/api-keys"): [{"json": {"name": "stolen"}}],
        ("GET", "/v1/sites/{site_id}/api-keys"): [{}],
        ("DELETE", "/v1/sites/{site_id}/api-keys/{key_id}"): [
            {},
            # Site B's key id under site A's own path.
            {"path": f"/v1/sites/{site_a.access.id}/api-keys/{b['key_id']}"},
        ],
        ("GET", "/v1/sites/{site_id}/coverage"): [{}],
        ("POST", "/v1/procedures"): [{"json": procedure_body("A-AT-B", site=site_b.access.slug)}],
        ("GET", "/v1/procedures"): [{"params": {"site_id": b["site_id"]}}],
        ("GET", "/v1/procedures/{procedure_id}"): [{}],
        ("GET", "/v1/procedures/{procedure_id}/coverage"): [{}],
        ("POST", "/v1/procedures/{procedure_id}/images"): [{"files": upload_files([shared_image])}],
        ("GET", "/v1/procedures/{procedure_id}/images"): [{}],
        ("GET", "/v1/images/{image_id}"): [{}],
        ("GET", "/v1/images/{image_id}/thumbnail"): [{}],
        ("GET", "/v1/references/{reference_id}/thumbnail"): [{}],
        ("POST", "/v1/images/{image_id}/reviews"): [
            {"json": {"action": "correct", "landmark_code": "normal-cecum", "reviewer": "intruder"}}
        ],
        ("GET", "/v1/images/{image_id}/reviews"): [{}],
        ("POST", "/v1/images/{image_id}/promote"): [{}],
        ("POST", "/v1/search"): [
            {"json": {"image_id": b["image_id"]}},
            {"json": {"image_id": a_image, "site_id": b["site_id"]}},
            {"files": query_file(shared_image), "data": {"filters": f'{{"site_id": "{b["site_id"]}"}}'}},
        ],
        ("GET", "/ui/"): [],  # checked by test_start_page_shows_own_site_only
        ("GET", "/ui/procedures/{procedure_id}"): [{}, {"cookie": True}],
        ("GET", "/ui/sites/{site_id}"): [{}, {"cookie": True}],
        ("GET", "/ui/images/{image_id}/thumbnail"): [{}, {"cookie": True}],
        ("GET", "/ui/references/{reference_id}/thumbnail"): [{}, {"cookie": True}],
    }


def query_file(path) -> dict:
    return {"file": (path.name, path.read_bytes(), "image/jpeg")}


def site_b_state(client, site_b) -> dict:
    """Return the data that site B's own key reads."""
    headers = site_b.access.headers
    images = client.get(f"/v1/procedures/{site_b.procedure_id}/images", headers=headers).json()
    return {
        "procedures": [item["id"] for item in client.get("/v1/procedures", headers=headers).json()["items"]],
        "images": [(item["id"], item["status"], item["prediction"]) for item in images["items"]],
        "reviews": [
            client.get(f"/v1/images/{image_id}/reviews", headers=headers).json() for image_id in site_b.image_ids
        ],
        "key works": client.get(f"/v1/sites/{site_b.access.id}", headers=headers).status_code,
    }


def site_b_secrets(site_b) -> tuple[str, ...]:
    """Return values of site B that must never appear in a response to site A.

    The shared image's sha256 is left out, because site A's own copy has the same one.
    """
    own_image_sha256 = site_b.image_sha256s[1]
    return (site_b.external_id, site_b.access.slug, own_image_sha256, site_b.access.key)


def site_b_ids(site_b) -> tuple[str, ...]:
    """Return site B's image and reference ids, which no list or search result of site A may contain."""
    return (*site_b.image_ids, site_b.reference_id)


def test_site_a_key_reaches_no_site_b_resource(app_client, queue, site_a, site_b, shared_image):
    requests = cross_site_requests(site_a, site_b, shared_image)
    assert set(requests) == set(keyed_routes(app_client.app)), "add the new route to cross_site_requests"
    before = site_b_state(app_client, site_b)

    problems = []
    for (method, template), attempts in requests.items():
        for attempt in attempts:
            options = dict(attempt)
            path = options.pop("path", None) or fill_path(template, site_b.path_values())
            app_client.cookies.clear()
            headers = dict(site_a.access.headers)
            if options.pop("cookie", False):
                headers = {}
                app_client.cookies.set("endodoc_key", site_a.access.key)
            response = app_client.request(method, path, headers=headers, follow_redirects=False, **options)
            label = f"{method} {path} {sorted(attempt)}"
            if response.status_code not in (403, 404):
                problems.append(f"{label}: {response.status_code} {response.text[:200]}")
            leaked = [value for value in site_b_secrets(site_b) if value in response.text]
            if leaked:
                problems.append(f"{label}: response contains {leaked}")
    app_client.cookies.clear()
    queue.wait_idle(timeout_s=120)

    assert problems == []
    assert site_b_state(app_client, site_b) == before


def test_lists_show_own_site_only(app_client, site_a, site_b):
    headers = site_a.access.headers
    procedures = app_client.get("/v1/procedures", headers=headers).json()
    images = app_client.get(f"/v1/procedures/{site_a.procedure_id}/images", headers=headers).json()
    coverage = app_client.get(f"/v1/sites/{site_a.access.id}/coverage", headers=headers)

    assert [item["id"] for item in procedures["items"]] == [site_a.procedure_id]
    assert procedures["total"] == 1
    assert sorted(item["id"] for item in images["items"]) == sorted(site_a.image_ids)
    assert coverage.status_code == 200
    for text in (procedures, images, coverage.text):
        for value in (*site_b_secrets(site_b), *site_b_ids(site_b)):
            assert value not in str(text)


def test_search_finds_own_site_only(app_client, site_a, site_b, shared_image):
    headers = site_a.access.headers
    by_stored_image = app_client.post(
        "/v1/search", json={"image_id": site_a.image_ids[0], "limit": 50}, headers=headers
    )
    by_upload = app_client.post("/v1/search", files=query_file(shared_image), headers=headers)
    by_b_procedure = app_client.post(
        "/v1/search", json={"image_id": site_a.image_ids[0], "procedure_id": site_b.procedure_id}, headers=headers
    )

    for response in (by_stored_image, by_upload, by_b_procedure):
        assert response.status_code == 200, response.text
        hits = {hit["image_id"] for hit in response.json()["hits"]}
        assert hits <= set(site_a.image_ids)
        for value in (*site_b_secrets(site_b), *site_b_ids(site_b)):
            assert value not in response.text
    # The uploaded query is the same file as one image of each site: site A's copy is the top hit.
    assert by_upload.json()["hits"][0]["image_id"] == site_a.image_ids[0]
    assert by_upload.json()["hits"][0]["similarity"] > 0.999
    assert by_b_procedure.json()["hits"] == []


def evidence_of(client, headers, image_ids) -> list[str]:
    evidence = []
    for image_id in image_ids:
        prediction = client.get(f"/v1/images/{image_id}", headers=headers).json()["prediction"]
        evidence.extend(item["reference_id"] for item in prediction["evidence"])
    return evidence


def test_evidence_never_cites_other_site_reference(app_client, queue, site_a, site_b, shared_image):
    evidence = evidence_of(app_client, site_a.access.headers, site_a.image_ids)
    coverage = app_client.get(f"/v1/procedures/{site_a.procedure_id}/coverage", headers=site_a.access.headers)

    assert evidence
    assert site_b.reference_id not in evidence
    assert site_b.reference_id not in coverage.text

    # A new copy of the image at site B does cite site B's reference, so the checks above can fail.
    copy = Image.open(shared_image)
    output = io.BytesIO()
    copy.save(output, "JPEG", quality=90)
    upload = app_client.post(
        f"/v1/procedures/{site_b.procedure_id}/images",
        files=[("files", ("copy.jpg", output.getvalue(), "image/jpeg"))],
        headers=site_b.access.headers,
    )
    queue.wait_idle(timeout_s=120)
    [outcome] = upload.json()["images"]
    assert site_b.reference_id in evidence_of(app_client, site_b.access.headers, [outcome["image_id"]])


def test_start_page_shows_own_site_only(app_client, site_a, site_b):
    app_client.cookies.set("endodoc_key", site_a.access.key)
    start = app_client.get("/ui/", follow_redirects=False)
    site_page = app_client.get(f"/ui/sites/{site_a.access.id}")
    app_client.cookies.clear()

    assert start.status_code == 303
    assert start.headers["location"] == f"/ui/sites/{site_a.access.id}"
    assert site_page.status_code == 200
    assert site_a.external_id in site_page.text
    for value in (*site_b_secrets(site_b), *site_b_ids(site_b)):
        assert value not in site_page.text
