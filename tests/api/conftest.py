"""API fixtures: an app on the embedded stack with a shared gallery, the admin key and site keys."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from services.api.app import create_app
from services.db import unit_of_work
from services.ingest.dispatch import InProcessQueue
from services.ingest.service import LabeledFile, UploadedFile, add_references
from tests.conftest import class_images

ADMIN_KEY = "admin-key-for-tests-only-0123456789"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
GALLERY_PER_CLASS = 6


@dataclass(frozen=True)
class SiteAccess:
    """A site created through the admin routes, with one API key."""

    id: str
    slug: str
    key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


def procedure_body(external_id: str = "COL-0001", **changes: str) -> dict[str, str]:
    body = {
        "external_id": external_id,
        "kind": "colonoscopy",
        "landmark_set": "hyperkvasir-lower-gi",
        "performed_at": "2026-11-30T09:15:00Z",
    }
    body.update(changes)
    return body


def upload_files(paths):
    return [("files", (path.name, path.read_bytes(), "image/jpeg")) for path in paths]


@pytest.fixture
def queue(runtime):
    queue = InProcessQueue(runtime)
    yield queue
    queue.close()


@pytest.fixture
def app_client(settings, runtime, queue, labeled_images):
    """Return an unauthenticated client; the shared gallery holds 6 references each of cecum and polyp."""
    settings.admin_api_key = SecretStr(ADMIN_KEY)
    with unit_of_work(runtime.sessions) as session:
        files = [
            LabeledFile(label, UploadedFile(path.name, path.read_bytes()))
            for label in ("normal-cecum", "polyp")
            for path in class_images(labeled_images, label, GALLERY_PER_CLASS)
        ]
        add_references(session, runtime, None, files)
    with TestClient(create_app(settings, runtime=runtime, queue=queue)) as client:
        yield client


def create_site(client: TestClient, slug: str) -> SiteAccess:
    site = client.post("/v1/sites", json={"slug": slug, "name": slug.title()}, headers=ADMIN)
    assert site.status_code == 201, site.text
    key = client.post(f"/v1/sites/{site.json()['id']}/api-keys", json={"name": "tests"}, headers=ADMIN)
    assert key.status_code == 201, key.text
    return SiteAccess(site.json()["id"], slug, key.json()["secret"])


@pytest.fixture
def site_a(app_client) -> SiteAccess:
    return create_site(app_client, "site-a")


@pytest.fixture
def site_b(app_client) -> SiteAccess:
    return create_site(app_client, "site-b")


@pytest.fixture
def client(app_client, site_a):
    """Return a client that sends site A's key with every request."""
    app_client.headers.update(site_a.headers)
    return app_client
