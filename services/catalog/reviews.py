"""Clinician reviews of image landmarks, and promotion of reviewed images into the reference gallery."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.catalog.models import Image, ImageReview, ImageStatus, Prediction, ReferenceImage, ReviewAction
from services.catalog.queries import CatalogError
from services.coverage.landmarks import get_landmark_set


def record_review(
    session: Session,
    image: Image,
    action: ReviewAction,
    landmark_code: str | None,
    reviewer: str,
    model_version: str,
    *,
    api_key_id: uuid.UUID | None = None,
    comment: str | None = None,
) -> ImageReview:
    """Record a confirmation of the predicted landmark, or a correction to `landmark_code`.

    A confirmation takes the landmark of the current model's prediction; when `landmark_code` is
    given it must match it. A correction needs a code of the procedure's landmark set. Raises
    CatalogError naming the invalid value.
    """
    if image.status == ImageStatus.FAILED:
        raise CatalogError(f"image {image.id} failed validation or embedding and cannot be reviewed: {image.error}")
    prediction = session.scalar(
        select(Prediction).where(Prediction.image_id == image.id, Prediction.model_version == model_version)
    )
    predicted = prediction.landmark_code if prediction is not None else None

    if action == ReviewAction.CONFIRM:
        if predicted is None:
            raise CatalogError(
                f"image {image.id} has no prediction under model {model_version} to confirm: "
                "wait until it is embedded, or send a correction with a landmark_code"
            )
        if landmark_code is not None and landmark_code != predicted:
            raise CatalogError(
                f"cannot confirm {landmark_code!r}: the predicted landmark is {predicted!r}; "
                "send action 'correct' to change it"
            )
        code = predicted
    else:
        if landmark_code is None:
            raise CatalogError("a correction needs a landmark_code")
        landmark_set = get_landmark_set(image.procedure.landmark_set)
        codes = [landmark.code for landmark in landmark_set.landmarks]
        if landmark_code not in codes:
            raise CatalogError(
                f"invalid landmark_code {landmark_code!r} for landmark set {landmark_set.code!r}: use one of {codes}"
            )
        code = landmark_code

    review = ImageReview(
        image_id=image.id,
        action=action,
        landmark_code=code,
        predicted_code=predicted,
        model_version=model_version if prediction is not None else None,
        reviewer=reviewer,
        api_key_id=api_key_id,
        comment=comment,
    )
    session.add(review)
    session.flush()
    return review


def image_reviews(session: Session, image_id: uuid.UUID) -> list[ImageReview]:
    """Return an image's reviews, newest first."""
    return list(
        session.scalars(
            select(ImageReview)
            .where(ImageReview.image_id == image_id)
            .order_by(ImageReview.created_at.desc(), ImageReview.id)
        )
    )


def latest_reviews(session: Session, image_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, ImageReview]:
    """Return the newest review of each image that has one."""
    latest: dict[uuid.UUID, ImageReview] = {}
    if not image_ids:
        return latest
    rows = session.scalars(
        select(ImageReview).where(ImageReview.image_id.in_(image_ids)).order_by(ImageReview.created_at)
    )
    for review in rows:
        latest[review.image_id] = review
    return latest


def promoted_reference(session: Session, image_id: uuid.UUID) -> ReferenceImage | None:
    """Return the reference image promoted from this procedure image, if any."""
    return session.scalar(select(ReferenceImage).where(ReferenceImage.source_image_id == image_id))
