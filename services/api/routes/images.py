"""Image routes: upload, get, thumbnail, clinician review and promotion into the gallery."""

from __future__ import annotations

import io
import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from starlette.datastructures import UploadFile

from services.api.auth import Principal, PrincipalDep
from services.api.deps import RuntimeDep, SessionDep, current_prediction, image_for, procedure_for
from services.api.errors import UPLOAD_ERROR_RESPONSES, ApiError
from services.api.schemas import (
    ImagePublic,
    Page,
    PredictionPublic,
    PromotionPublic,
    ReviewCreate,
    ReviewPublic,
    UploadPublic,
)
from services.api.uploads import read_limited_form, store_files
from services.catalog.models import Image, ImageStatus, ReferenceImage
from services.catalog.promotion import promote_image
from services.catalog.reviews import image_reviews, latest_reviews, record_review
from services.db import unit_of_work
from services.embedding import InvalidImageError, open_image
from services.ingest.blobs import BlobNotFoundError
from services.ingest.service import FileOutcome
from services.runtime import Runtime

router = APIRouter()

THUMBNAIL_SIZES = (64, 128, 256, 512)
MULTIPART_FILES_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["files"],
                    "properties": {"files": {"type": "array", "items": {"type": "string", "format": "binary"}}},
                }
            }
        },
    }
}


def thumbnail_url(image_id: uuid.UUID) -> str:
    return f"/v1/images/{image_id}/thumbnail"


@router.post(
    "/v1/procedures/{procedure_id}/images",
    status_code=status.HTTP_202_ACCEPTED,
    tags=["images"],
    responses=UPLOAD_ERROR_RESPONSES,
    openapi_extra=MULTIPART_FILES_BODY,
)
async def upload_images(procedure_id: uuid.UUID, request: Request, principal: PrincipalDep) -> UploadPublic:
    """Upload JPEG, PNG or TIFF images (multipart field `files`, repeated); they are embedded in the background.

    Each file is checked from its bytes and fully decoded; metadata is removed before it is
    stored. A file the procedure already has returns its existing image id with `duplicate`.
    """
    runtime: Runtime = request.app.state.runtime
    settings = runtime.settings
    await run_in_threadpool(_check_procedure, runtime, principal, procedure_id)
    form = await read_limited_form(request, settings.upload_max_bytes, settings.upload_max_files)
    try:
        uploads = [item for item in form.getlist("files") if isinstance(item, UploadFile)]
        if not uploads:
            raise ApiError(422, "invalid_upload", "no files in the request: send images in the multipart field `files`")
        # The client's filename is only echoed back; storage keys come from the content's sha256.
        received = [(upload.filename or "unnamed", await upload.read()) for upload in uploads]
    finally:
        await form.close()

    outcomes = await run_in_threadpool(_store_uploads, runtime, procedure_id, received)
    # A duplicate still queued is enqueued again, and embedding skips images already done. Sending
    # runs in a worker thread, because it blocks for seconds of retries while the broker is down.
    queued_ids = [outcome.image_id for outcome in outcomes if outcome.status == ImageStatus.QUEUED]
    await run_in_threadpool(request.app.state.queue.enqueue, queued_ids)
    body = UploadPublic(procedure_id=procedure_id, images=[outcome.__dict__ for outcome in outcomes])
    if all(outcome.status == ImageStatus.FAILED for outcome in outcomes):
        raise ApiError(
            422,
            "invalid_image",
            "; ".join(f"{outcome.filename}: {outcome.error}" for outcome in outcomes),
            body.model_dump(mode="json"),
        )
    return body


def _check_procedure(runtime: Runtime, principal: Principal, procedure_id: uuid.UUID) -> None:
    with unit_of_work(runtime.sessions) as session:
        procedure_for(session, principal, procedure_id)


def _store_uploads(runtime: Runtime, procedure_id: uuid.UUID, received: list[tuple[str, bytes]]) -> list[FileOutcome]:
    """Check and store the files in one committed transaction, before anything is enqueued."""
    with unit_of_work(runtime.sessions) as session:
        return store_files(session, runtime, procedure_id, received)


def _image_public(session: Session, image: Image, model_version: str) -> ImagePublic:
    prediction = current_prediction(session, image.id, model_version)
    review = latest_reviews(session, [image.id]).get(image.id)
    return ImagePublic(
        id=image.id,
        procedure_id=image.procedure_id,
        sha256=image.sha256,
        status=image.status,
        error=image.error,
        width=image.width,
        height=image.height,
        created_at=image.created_at,
        embedded_at=image.embedded_at,
        prediction=PredictionPublic.model_validate(prediction) if prediction is not None else None,
        review=ReviewPublic.model_validate(review) if review is not None else None,
        thumbnail_url=thumbnail_url(image.id) if image.blob_key is not None else None,
    )


@router.get("/v1/procedures/{procedure_id}/images", tags=["images"])
def list_images(
    procedure_id: uuid.UUID,
    principal: PrincipalDep,
    session: SessionDep,
    runtime: RuntimeDep,
    status_filter: Annotated[ImageStatus | None, Query(alias="status")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> Page[ImagePublic]:
    """List a procedure's images in upload order, with predictions and reviews."""
    procedure_for(session, principal, procedure_id)
    query = select(Image).where(Image.procedure_id == procedure_id)
    if status_filter is not None:
        query = query.where(Image.status == status_filter)
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    images = session.scalars(query.order_by(Image.created_at, Image.id).limit(limit).offset(offset))
    model_version = runtime.model_version
    return Page[ImagePublic](
        items=[_image_public(session, image, model_version) for image in images], total=total, limit=limit, offset=offset
    )


@router.get("/v1/images/{image_id}", tags=["images"])
def get_image(image_id: uuid.UUID, principal: PrincipalDep, session: SessionDep, runtime: RuntimeDep) -> ImagePublic:
    """Return an image's status, its prediction under the current model and its latest review."""
    return _image_public(session, image_for(session, principal, image_id), runtime.model_version)


def render_thumbnail(runtime: Runtime, image: Image | ReferenceImage, size: int) -> bytes:
    """Return a JPEG of at most `size` x `size` pixels, or raise 404 when the image has no stored file."""
    if image.blob_key is None:
        raise ApiError(404, "not_found", f"image {image.id} has no stored file ({image.status.value}: {image.error})")
    try:
        picture = open_image(
            runtime.blobs.get(image.blob_key), max_pixels=runtime.settings.image_max_pixels, draft_size=size
        )
    except (BlobNotFoundError, InvalidImageError) as error:
        raise ApiError(404, "not_found", f"the file of image {image.id} cannot be read: {error}") from None
    picture.thumbnail((size, size))
    output = io.BytesIO()
    picture.save(output, "JPEG", quality=85)
    return output.getvalue()


def check_thumbnail_size(size: int) -> None:
    if size not in THUMBNAIL_SIZES:
        raise ApiError(422, "invalid_value", f"invalid thumbnail size {size}: use one of {list(THUMBNAIL_SIZES)}")


def thumbnail_response(runtime: Runtime, row: Image | ReferenceImage, size: int) -> Response:
    """Return a JPEG thumbnail response that the browser may cache privately for an hour."""
    return Response(
        render_thumbnail(runtime, row, size),
        media_type="image/jpeg",
        headers={"Cache-Control": "private, max-age=3600"},
    )


@router.get(
    "/v1/images/{image_id}/thumbnail",
    tags=["images"],
    response_class=Response,
    responses={200: {"content": {"image/jpeg": {}}, "description": "A JPEG thumbnail"}},
)
def get_thumbnail(
    image_id: uuid.UUID,
    principal: PrincipalDep,
    session: SessionDep,
    runtime: RuntimeDep,
    size: Annotated[int, Query(description=f"Maximum width and height in pixels, one of {THUMBNAIL_SIZES}.")] = 256,
) -> Response:
    """Return a JPEG thumbnail of the image."""
    check_thumbnail_size(size)
    return thumbnail_response(runtime, image_for(session, principal, image_id), size)


def reference_for(session: Session, principal: Principal, reference_id: uuid.UUID) -> ReferenceImage:
    """Return a reference image of the shared gallery or of the caller's site; 404 or 403 otherwise."""
    reference = session.get(ReferenceImage, reference_id)
    if reference is None:
        raise ApiError(404, "not_found", f"reference image {reference_id} not found")
    if reference.site_id is not None:
        principal.require_site(reference.site_id)
    return reference


@router.get(
    "/v1/references/{reference_id}/thumbnail",
    tags=["images"],
    response_class=Response,
    responses={200: {"content": {"image/jpeg": {}}, "description": "A JPEG thumbnail"}},
)
def get_reference_thumbnail(
    reference_id: uuid.UUID,
    principal: PrincipalDep,
    session: SessionDep,
    runtime: RuntimeDep,
    size: Annotated[int, Query(description=f"Maximum width and height in pixels, one of {THUMBNAIL_SIZES}.")] = 256,
) -> Response:
    """Return a JPEG thumbnail of a reference image that supports a prediction (evidence)."""
    check_thumbnail_size(size)
    return thumbnail_response(runtime, reference_for(session, principal, reference_id), size)


@router.post("/v1/images/{image_id}/reviews", status_code=status.HTTP_201_CREATED, tags=["review"])
def create_review(
    image_id: uuid.UUID, body: ReviewCreate, principal: PrincipalDep, session: SessionDep, runtime: RuntimeDep
) -> ReviewPublic:
    """Confirm the image's predicted landmark or correct it; who and when are stored."""
    image = image_for(session, principal, image_id)
    review = record_review(
        session,
        image,
        body.action,
        body.landmark_code,
        body.reviewer,
        runtime.model_version,
        api_key_id=principal.api_key_id,
        comment=body.comment,
    )
    return ReviewPublic.model_validate(review)


@router.get("/v1/images/{image_id}/reviews", tags=["review"])
def list_reviews(image_id: uuid.UUID, principal: PrincipalDep, session: SessionDep) -> list[ReviewPublic]:
    """List the image's reviews, newest first."""
    image_for(session, principal, image_id)
    return [ReviewPublic.model_validate(review) for review in image_reviews(session, image_id)]


@router.post("/v1/images/{image_id}/promote", tags=["review"])
def promote(image_id: uuid.UUID, principal: PrincipalDep, session: SessionDep, runtime: RuntimeDep) -> PromotionPublic:
    """Add a reviewed image to its site's reference gallery under the reviewed landmark.

    Later predictions of the site's images use it at once, without retraining.
    """
    image = image_for(session, principal, image_id)
    reference = promote_image(session, runtime, image)
    return PromotionPublic(
        image_id=image.id,
        reference_id=reference.id,
        site_id=image.procedure.site_id,
        label=reference.label,
        model_version=runtime.model_version,
    )
