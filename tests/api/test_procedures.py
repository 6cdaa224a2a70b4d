"""Procedure lists with filters and pagination, and the site coverage report."""

from __future__ import annotations

import pytest

from services.catalog.models import Procedure
from services.coverage.report import procedure_coverage
from services.coverage.site_report import landmark_statuses
from services.db import unit_of_work
from tests.api.conftest import ADMIN, procedure_body, upload_files
from tests.conftest import class_images


@pytest.fixture
def procedures(client, queue, labeled_images):
    """Create three colonoscopies: two document the caecum, one (COL-3) does not."""
    cecum = class_images(labeled_images, "normal-cecum", 9)[6:9]
    polyp = class_images(labeled_images, "polyp", 9)[6:9]
    plan = {
        "COL-1": ("2026-11-01T08:00:00Z", [cecum[0], polyp[0]]),
        "COL-2": ("2026-11-15T08:00:00Z", [cecum[1], polyp[1]]),
        "COL-3": ("2026-11-25T08:00:00Z", [polyp[2]]),
    }
    ids = {}
    for external_id, (performed_at, paths) in plan.items():
        procedure = client.post("/v1/procedures", json=procedure_body(external_id, performed_at=performed_at)).json()
        client.post(f"/v1/procedures/{procedure['id']}/images", files=upload_files(paths))
        ids[external_id] = procedure["id"]
    queue.wait_idle(timeout_s=300)
    return ids


def external_ids(response) -> list[str]:
    assert response.status_code == 200, response.text
    return [item["external_id"] for item in response.json()["items"]]


def test_list_is_newest_first_with_status(client, procedures):
    listed = client.get("/v1/procedures").json()
    assert [item["external_id"] for item in listed["items"]] == ["COL-3", "COL-2", "COL-1"]
    assert [item["coverage_status"] for item in listed["items"]] == ["incomplete", "complete", "complete"]
    assert listed["total"] == 3


def test_list_filters_by_date_kind_and_coverage(client, procedures):
    assert external_ids(client.get("/v1/procedures", params={"from": "2026-11-10T00:00:00Z"})) == ["COL-3", "COL-2"]
    assert external_ids(client.get("/v1/procedures", params={"to": "2026-11-10T00:00:00Z"})) == ["COL-1"]
    assert external_ids(client.get("/v1/procedures", params={"kind": "egd"})) == []
    assert external_ids(client.get("/v1/procedures", params={"coverage": "incomplete"})) == ["COL-3"]
    assert external_ids(client.get("/v1/procedures", params={"coverage": "complete"})) == ["COL-2", "COL-1"]


def test_list_pages(client, procedures):
    first = client.get("/v1/procedures", params={"limit": 2}).json()
    second = client.get("/v1/procedures", params={"limit": 2, "offset": 2}).json()
    assert [item["external_id"] for item in first["items"]] == ["COL-3", "COL-2"]
    assert [item["external_id"] for item in second["items"]] == ["COL-1"]
    assert first["total"] == second["total"] == 3
    filtered = client.get("/v1/procedures", params={"coverage": "complete", "limit": 1, "offset": 1}).json()
    assert [item["external_id"] for item in filtered["items"]] == ["COL-1"]
    assert filtered["total"] == 2


def test_list_rejects_invalid_filters(client):
    for params in ({"coverage": "done"}, {"kind": "ercp"}, {"limit": 0}, {"from": "yesterday"}):
        response = client.get("/v1/procedures", params=params)
        assert response.status_code == 422, params
        assert response.json()["error"]["code"] == "invalid_request"


def test_site_coverage_rates_and_missing_procedures(client, site_a, procedures):
    response = client.get(f"/v1/sites/{site_a.id}/coverage")
    assert response.status_code == 200
    body = response.json()
    assert body["procedures"] == 3
    [group] = body["landmark_sets"]
    assert group["landmark_set"] == "hyperkvasir-lower-gi"
    assert group["complete_procedures"] == 2
    [cecum] = group["landmarks"]
    assert cecum["code"] == "normal-cecum"
    assert cecum["documented"] == 2
    assert cecum["rate"] == pytest.approx(2 / 3, abs=1e-4)
    assert [item["external_id"] for item in cecum["undocumented"]] == ["COL-3"]
    assert cecum["undocumented"][0]["status"] == "missing"


def test_site_coverage_date_range(client, site_a, procedures):
    ranged = client.get(
        f"/v1/sites/{site_a.id}/coverage", params={"from": "2026-11-10T00:00:00Z", "to": "2026-11-20T00:00:00Z"}
    ).json()
    assert ranged["procedures"] == 1
    assert ranged["landmark_sets"][0]["landmarks"][0]["rate"] == 1.0
    empty = client.get(f"/v1/sites/{site_a.id}/coverage", params={"from": "2027-01-01T00:00:00Z"}).json()
    assert empty["procedures"] == 0
    assert empty["landmark_sets"] == []
    backwards = client.get(
        f"/v1/sites/{site_a.id}/coverage", params={"from": "2026-11-20T00:00:00Z", "to": "2026-11-10T00:00:00Z"}
    )
    assert backwards.status_code == 422


def test_unknown_site_is_404_for_admin(app_client, procedures):
    response = app_client.get("/v1/sites/00000000-0000-4000-8000-000000000000/coverage", headers=ADMIN)
    assert response.status_code == 404


def test_bulk_statuses_match_procedure_report(client, runtime, procedures):
    with unit_of_work(runtime.sessions) as session:
        rows = session.query(Procedure).all()
        bulk = landmark_statuses(session, rows, runtime.model_version, runtime.settings.coverage.min_score)
        for procedure in rows:
            report = procedure_coverage(session, procedure, runtime.model_version, runtime.settings.coverage.min_score)
            assert bulk[procedure.id] == {item.code: item.status for item in report.landmarks}
