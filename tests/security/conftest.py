"""Security fixtures: the API app of tests/api with two sites, each with a key, procedure, images and reference."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from tests.api.conftest import ADMIN, GALLERY_PER_CLASS, SiteAccess, create_site, procedure_body, upload_files
from tests.api.conftest import app_client, queue  # noqa: F401 (fixtures)
from tests.conftest import class_images

EMBED_TIMEOUT_S = 120


@dataclass(frozen=True)
class SiteData:
    """One site's key and the ids of everything it owns."""

    access: SiteAccess
    key_id: str
    procedure_id: str
    external_id: str
    image_ids: tuple[str, ...]
    image_sha256s: tuple[str, ...]
    reference_id: str

    def path_values(self) -> dict[str, str]:
        """Return this site's resource ids by the path parameter names of the API routes."""
        return {
            "site_id": self.access.id,
            "key_id": self.key_id,
            "procedure_id": self.procedure_id,
            "image_id": self.image_ids[0],
            "reference_id": self.reference_id,
        }


def populate_site(client, queue, slug: str, external_id: str, paths) -> SiteData:
    """Create a site with a key and a procedure, upload and embed `paths`, then review and promote the first image."""
    access = create_site(client, slug)
    headers = access.headers
    procedure = client.post("/v1/procedures", json=procedure_body(external_id), headers=headers)
    assert procedure.status_code == 201, procedure.text
    procedure_id = procedure.json()["id"]
    upload = client.post(f"/v1/procedures/{procedure_id}/images", files=upload_files(paths), headers=headers)
    assert upload.status_code == 202, upload.text
    image_ids = tuple(outcome["image_id"] for outcome in upload.json()["images"])
    queue.wait_idle(timeout_s=EMBED_TIMEOUT_S)

    review = client.post(
        f"/v1/images/{image_ids[0]}/reviews",
        json={"action": "correct", "landmark_code": "polyp", "reviewer": f"dr.{slug}"},
        headers=headers,
    )
    assert review.status_code == 201, review.text
    promotion = client.post(f"/v1/images/{image_ids[0]}/promote", headers=headers)
    assert promotion.status_code == 200, promotion.text

    keys = client.get(f"/v1/sites/{access.id}/api-keys", headers=ADMIN).json()
    images = [client.get(f"/v1/images/{image_id}", headers=headers).json() for image_id in image_ids]
    assert [image["status"] for image in images] == ["embedded"] * len(images)
    return SiteData(
        access=access,
        key_id=keys[0]["id"],
        procedure_id=procedure_id,
        external_id=external_id,
        image_ids=image_ids,
        image_sha256s=tuple(image["sha256"] for image in images),
        reference_id=promotion.json()["reference_id"],
    )


@pytest.fixture
def shared_image(labeled_images):
    """Return a polyp image outside the gallery that both sites upload, so a leak would be an exact match."""
    return class_images(labeled_images, "polyp", GALLERY_PER_CLASS + 1)[-1]


@pytest.fixture
def site_b(app_client, queue, labeled_images, shared_image) -> SiteData:  # noqa: F811 (fixtures imported above)
    own = class_images(labeled_images, "normal-cecum", GALLERY_PER_CLASS + 2)[-1]
    return populate_site(app_client, queue, "site-b", "B-SECRET-0001", [shared_image, own])


@pytest.fixture
def site_a(app_client, queue, labeled_images, shared_image, site_b) -> SiteData:  # noqa: F811
    """Site A, populated after site B has promoted its copy of the shared image into its own gallery."""
    own = class_images(labeled_images, "normal-cecum", GALLERY_PER_CLASS + 3)[-1]
    return populate_site(app_client, queue, "site-a", "A-0001", [shared_image, own])
