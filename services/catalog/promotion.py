"""Promotion of a reviewed procedure image into its site's reference gallery."""

from __future__ import annotations

import structlog
from sqlalchemy.orm import Session

from services.catalog.models import Image, ReferenceImage
from services.catalog.queries import CatalogError
from services.catalog.reviews import latest_reviews
from services.ingest.service import LabeledFile, UploadedFile, add_references
from services.runtime import Runtime

logger = structlog.get_logger(__name__)


def promote_image(session: Session, runtime: Runtime, image: Image) -> ReferenceImage:
    """Add a reviewed image to its site's gallery under the reviewed landmark, and return the reference.

    The reference is embedded and upserted into the references collection of the current
    model version with the site's `site_id` payload, so the next k-NN votes of that site use it
    without retraining. Promoting the same image again updates the existing reference's label.
    Raises CatalogError when the image has no review.
    """
    review = latest_reviews(session, [image.id]).get(image.id)
    if review is None:
        raise CatalogError(
            f"image {image.id} has no review: confirm or correct its landmark before promoting it"
        )
    if image.blob_key is None:
        raise CatalogError(f"image {image.id} has no stored file and cannot be promoted")

    site = image.procedure.site
    data = runtime.blobs.get(image.blob_key)
    [reference] = add_references(
        session, runtime, site, [LabeledFile(review.landmark_code, UploadedFile(f"image-{image.id}", data))]
    )
    reference.source_image_id = image.id
    session.flush()
    logger.info(
        "image_promoted",
        image_id=str(image.id),
        reference_id=str(reference.id),
        site_id=str(site.id),
        label=review.landmark_code,
    )
    return reference
