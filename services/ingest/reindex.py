"""Re-embed the whole catalog with the configured model into its own collections, then switch aliases.

Each model version has its own collections (`images__<version>`, `references__<version>`),
so reindexing never touches the vectors the running API and workers use. When every
reference and every embedded image has a point in the new collections, the aliases
`images` and `references` move to them in one request each. The endodoc API and workers pick
collections by their own model version. The aliases tell every other Qdrant reader
(dashboards, exports, ad-hoc queries) which embedding space is current.

Running it again continues where it stopped: images already embedded under the new model
version are skipped, and reference points are upserted by id.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import structlog
from PIL import Image as PILImage
from sqlalchemy import select

from services.catalog.models import Image, ImageStatus, ReferenceImage
from services.db import unit_of_work
from services.embedding import InvalidImageError, open_image
from services.ingest.blobs import BlobNotFoundError
from services.ingest.service import embed_images
from services.runtime import Runtime
from services.vectors import VectorPoint
from services.vectors.tenancy import payload_site

logger = structlog.get_logger(__name__)

IMAGES_ALIAS = "images"
REFERENCES_ALIAS = "references"

Progress = Callable[[str, int], None]


@dataclass
class ReindexReport:
    """Counts of one reindex run and the aliases it switched."""

    model_version: str
    images_collection: str
    references_collection: str
    references: int = 0
    references_failed: list[str] = field(default_factory=list)
    images: int = 0
    images_remaining: int = 0
    aliases: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


def reindex(runtime: Runtime, *, switch_aliases: bool = True, progress: Progress | None = None) -> ReindexReport:
    """Embed every reference and every embedded image with the current model, then switch the aliases.

    The aliases are switched only when no reference failed and no image is left under
    another model version, so a partial run never redirects readers to an incomplete collection.
    """
    images_collection, references_collection = runtime.collections()
    report = ReindexReport(runtime.model_version, images_collection, references_collection)

    _reindex_references(runtime, references_collection, report, progress)
    _reindex_images(runtime, report, progress)

    complete = not report.references_failed and report.images_remaining == 0
    switch = getattr(runtime.vectors, "switch_alias", None)
    if switch_aliases and complete and switch is not None:
        switch(IMAGES_ALIAS, images_collection)
        switch(REFERENCES_ALIAS, references_collection)
        report.aliases = {IMAGES_ALIAS: images_collection, REFERENCES_ALIAS: references_collection}
    elif switch_aliases and not complete:
        logger.warning("reindex_incomplete_aliases_kept", failed=len(report.references_failed),
                       images_remaining=report.images_remaining)
    logger.info("reindexed", **{key: value for key, value in report.as_dict().items() if key != "references_failed"})
    return report


def _reindex_references(runtime: Runtime, collection: str, report: ReindexReport, progress: Progress | None) -> None:
    with unit_of_work(runtime.sessions) as session:
        references = list(session.execute(
            select(ReferenceImage.id, ReferenceImage.site_id, ReferenceImage.label, ReferenceImage.blob_key)
            .order_by(ReferenceImage.id)
        ).all())

    batch_size = runtime.settings.model.batch_size
    for start in range(0, len(references), batch_size):
        decoded: list[tuple[uuid.UUID, uuid.UUID | None, str, PILImage.Image]] = []
        for reference_id, site_id, label, key in references[start : start + batch_size]:
            try:
                # Decoded in full, as `add_references` decodes them.
                picture = open_image(runtime.blobs.get(key), max_pixels=runtime.settings.image_max_pixels)
            except (InvalidImageError, BlobNotFoundError, ValueError) as error:
                report.references_failed.append(f"{reference_id}: {error}")
                logger.error("reference_reindex_failed", reference_id=str(reference_id), error=str(error))
                continue
            decoded.append((reference_id, site_id, label, picture))
        if not decoded:
            continue
        vectors = runtime.embedder.embed([picture for *_, picture in decoded])
        runtime.vectors.upsert(
            collection,
            [
                VectorPoint(
                    id=reference_id,
                    vector=vector,
                    payload={"site_id": payload_site(site_id), "image_id": str(reference_id), "label": label},
                )
                for (reference_id, site_id, label, _), vector in zip(decoded, vectors, strict=True)
            ],
        )
        report.references += len(decoded)
        if progress is not None:
            progress("references", len(decoded))


def _reindex_images(runtime: Runtime, report: ReindexReport, progress: Progress | None) -> None:
    model_version = report.model_version
    with unit_of_work(runtime.sessions) as session:
        image_ids = list(session.scalars(
            select(Image.id)
            .where(Image.status == ImageStatus.EMBEDDED, Image.model_version != model_version)
            .order_by(Image.id)
        ))

    batch_size = runtime.settings.model.batch_size
    for start in range(0, len(image_ids), batch_size):
        chunk = image_ids[start : start + batch_size]
        # One transaction per batch, so an interrupted run keeps what it finished.
        with unit_of_work(runtime.sessions) as session:
            report.images += embed_images(session, runtime, chunk)
        if progress is not None:
            progress("images", len(chunk))

    with unit_of_work(runtime.sessions) as session:
        report.images_remaining = len(session.scalars(
            select(Image.id).where(Image.status == ImageStatus.EMBEDDED, Image.model_version != model_version)
        ).all())
