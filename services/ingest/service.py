"""Ingestion: validate and store uploads, then embed, index and label them.

Uploads are split in two steps so that a queue can sit between them. `add_images` validates
and stores each file and records a `queued` row. After the caller commits, `embed_images`
embeds the queued rows, upserts their vectors, labels them by k-NN over the reference gallery
and records the predictions. Both take a session and never commit.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import structlog
from PIL import Image as PILImage
from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from services.catalog.models import Image, ImageStatus, Prediction, ReferenceImage, Site
from services.catalog.queries import CatalogError
from services.coverage.knn import vote
from services.coverage.landmarks import known_landmark_codes
from services.embedding import InvalidImageError, open_image
from services.embedding.pipeline import prepare_ahead
from services.ingest.blobs import BlobNotFoundError, blob_key
from services.runtime import Runtime
from services.vectors import VectorPoint
from services.vectors.tenancy import payload_site, site_filter

logger = structlog.get_logger(__name__)

Progress = Callable[[int], None]


@dataclass(frozen=True)
class UploadedFile:
    """One uploaded file. `filename` is only shown back to the client, never used as a path."""

    filename: str
    data: bytes


@dataclass(frozen=True)
class FileOutcome:
    """The outcome of one uploaded file: its image id, status and error."""

    filename: str
    image_id: uuid.UUID
    status: ImageStatus
    error: str | None = None
    duplicate: bool = False


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _chunks(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def add_images(session: Session, runtime: Runtime, procedure_id: uuid.UUID, files: Sequence[UploadedFile]) -> list[FileOutcome]:
    """Validate and store each file as a `queued` image of the procedure.

    A file that is not a readable image becomes a `failed` image with the reason, so the other
    files of the batch still go ahead. A file whose bytes the procedure already has returns the
    existing image. If that image was readable but its embedding failed (a service was down, a
    weight file missing), it is queued again, so that uploading it again retries it.
    """
    outcomes = []
    for upload in files:
        digest = _sha256(upload.data)
        existing = session.scalar(select(Image).where(Image.procedure_id == procedure_id, Image.sha256 == digest))
        if existing is not None:
            if existing.status == ImageStatus.FAILED and existing.blob_key is not None:
                runtime.blobs.put(existing.blob_key, upload.data)
                existing.status = ImageStatus.QUEUED
                existing.error = None
                existing.attempts = 0
                existing.status_changed_at = datetime.now(UTC)
                session.flush()
                logger.info("image_requeued", image_id=str(existing.id), procedure_id=str(procedure_id))
            outcomes.append(
                FileOutcome(upload.filename, existing.id, existing.status, existing.error, duplicate=True)
            )
            continue

        image = Image(procedure_id=procedure_id, sha256=digest)
        try:
            decoded = open_image(upload.data, max_pixels=runtime.settings.image_max_pixels)
        except InvalidImageError as error:
            image.status = ImageStatus.FAILED
            image.error = f"not a readable image: {error}"
            logger.info("image_rejected", procedure_id=str(procedure_id), sha256=digest, reason=str(error))
        else:
            image.width, image.height = decoded.size
            image.blob_key = blob_key(digest)
            image.status = ImageStatus.QUEUED
            runtime.blobs.put(image.blob_key, upload.data)
        session.add(image)
        session.flush()
        outcomes.append(FileOutcome(upload.filename, image.id, image.status, image.error))
    return outcomes


def _decode_blob(runtime: Runtime, key: str) -> PILImage.Image:
    """Decode a stored image for embedding, at reduced size where the format allows it."""
    return open_image(
        runtime.blobs.get(key),
        max_pixels=runtime.settings.image_max_pixels,
        draft_size=runtime.embedder.input_size,
    )


def embed_images(
    session: Session, runtime: Runtime, image_ids: Sequence[uuid.UUID], progress: Progress | None = None
) -> int:
    """Embed, index and label the given images; return how many were embedded now.

    Safe to run twice: images already embedded under the current model version are skipped,
    the vector point id is the image id, and a prediction is kept per image and model version.
    """
    embedder = runtime.embedder
    model_version = embedder.model_version
    images_collection, references_collection = runtime.collections()
    coverage = runtime.settings.coverage

    # Row locks (PostgreSQL) make a second task for the same images wait for this transaction,
    # then see them `embedded` and skip them, so each image gets one prediction per model version.
    images = session.scalars(
        select(Image)
        .where(Image.id.in_(image_ids))
        .order_by(Image.id)
        .options(selectinload(Image.procedure))
        .with_for_update(of=Image)
    ).all()
    todo = [
        image
        for image in images
        if image.status == ImageStatus.QUEUED
        or (image.status == ImageStatus.EMBEDDED and image.model_version != model_version)
    ]
    embedded = 0
    # The decoding thread gets each image's blob key, never the ORM object this loop changes.
    keyed = [(image, image.blob_key or "") for image in todo]
    prepared_batches = prepare_ahead(
        _chunks(keyed, runtime.settings.model.batch_size),
        lambda item: _decode_blob(runtime, item[1]),
        embedder,
        errors=(InvalidImageError, BlobNotFoundError, ValueError),
    )
    for prepared in prepared_batches:
        for (image, _), error in prepared.failures:
            image.status = ImageStatus.FAILED
            image.error = f"could not be read for embedding: {error}"
            image.status_changed_at = datetime.now(UTC)
            logger.warning("image_failed", image_id=str(image.id), error=str(error))
        if prepared.inputs is None:
            if progress is not None:
                progress(len(prepared.failures))
            continue

        decoded = prepared.items
        vectors = embedder.embed_inputs(prepared.inputs)
        site_filters = [site_filter(image.procedure.site_id, include_shared=True) for image, _ in decoded]
        neighbours = [
            runtime.vectors.search(references_collection, vector, coverage.knn_k, where)
            for vector, where in zip(vectors, site_filters, strict=True)
        ]
        if not any(neighbours):
            logger.warning(
                "no_reference_images",
                collection=references_collection,
                image_count=len(decoded),
                fix="add labeled reference images with `endodoc gallery add` before coverage can document landmarks",
            )
        points = []
        now = datetime.now(UTC)
        for (image, _), vector, hits in zip(decoded, vectors, neighbours, strict=True):
            result = vote(hits, coverage.knn_temperature, coverage.evidence_count)
            label = result.label if result is not None else ""
            points.append(
                VectorPoint(
                    id=image.id,
                    vector=vector,
                    payload={
                        "site_id": str(image.procedure.site_id),
                        "procedure_id": str(image.procedure_id),
                        "image_id": str(image.id),
                        "label": label,
                    },
                )
            )
            if result is not None:
                _record_prediction(session, image.id, model_version, result.label, result.score,
                                   [item.as_dict() for item in result.evidence])
            image.status = ImageStatus.EMBEDDED
            image.error = None
            image.model_version = model_version
            image.embedded_at = now
            image.status_changed_at = now
        runtime.vectors.upsert(images_collection, points)
        session.flush()
        embedded += len(decoded)
        if progress is not None:
            progress(len(decoded) + len(prepared.failures))
    logger.info("images_embedded", count=embedded, model_version=model_version)
    return embedded


def _record_prediction(
    session: Session, image_id: uuid.UUID, model_version: str, label: str, score: float, evidence: list[dict]
) -> None:
    """Insert or replace the prediction of one image under one model version."""
    prediction = session.scalar(
        select(Prediction).where(Prediction.image_id == image_id, Prediction.model_version == model_version)
    )
    if prediction is None:
        prediction = Prediction(image_id=image_id, model_version=model_version)
        session.add(prediction)
    prediction.landmark_code = label
    prediction.score = score
    prediction.evidence = evidence


@dataclass(frozen=True)
class LabeledFile:
    """A reference image file with its landmark code."""

    label: str
    file: UploadedFile


def add_references(
    session: Session, runtime: Runtime, site: Site | None, files: Sequence[LabeledFile], progress: Progress | None = None
) -> list[ReferenceImage]:
    """Store, embed and index labeled reference images for one site, or for all sites when `site` is None.

    Raises CatalogError before storing anything when a label is not a known landmark code or a
    file is not a readable image.
    """
    known = known_landmark_codes()
    unknown = sorted({item.label for item in files} - known)
    if unknown:
        raise CatalogError(f"unknown reference labels {unknown}: use landmark codes such as {sorted(known)[:8]}")

    for item in files:
        try:
            open_image(item.file.data, max_pixels=runtime.settings.image_max_pixels)
        except InvalidImageError as error:
            raise CatalogError(f"reference image {item.file.filename!r} is not a readable image: {error}") from None

    embedder = runtime.embedder
    _, references_collection = runtime.collections()
    site_id = site.id if site is not None else None
    site_key = payload_site(site_id)
    references = []
    for batch in _chunks(files, runtime.settings.model.batch_size):
        pending: list[tuple[ReferenceImage, PILImage.Image]] = []
        for item in batch:
            digest = _sha256(item.file.data)
            existing = session.scalar(
                select(ReferenceImage).where(ReferenceImage.site_id == site_id, ReferenceImage.sha256 == digest)
            )
            # References are decoded in full: they are added once, so speed does not matter,
            # and the demo's labelling was measured with full-size references (docs/benchmarks.md).
            picture = open_image(item.file.data, max_pixels=runtime.settings.image_max_pixels)
            if existing is not None:
                existing.label = item.label
                reference = existing
            else:
                reference = ReferenceImage(site_id=site_id, label=item.label, sha256=digest, blob_key=blob_key(digest))
                session.add(reference)
                runtime.blobs.put(reference.blob_key, item.file.data)
            pending.append((reference, picture))
        session.flush()

        vectors = embedder.embed([picture for _, picture in pending])
        runtime.vectors.upsert(
            references_collection,
            [
                VectorPoint(
                    id=reference.id,
                    vector=vector,
                    payload={"site_id": site_key, "image_id": str(reference.id), "label": reference.label},
                )
                for (reference, _), vector in zip(pending, vectors, strict=True)
            ],
        )
        references.extend(reference for reference, _ in pending)
        if progress is not None:
            progress(len(batch))
    logger.info("references_added", count=len(references), site_id=site_key, model_version=embedder.model_version)
    return references
