"""Similar-image search: Qdrant's filtered search joined with the procedures in the catalog."""

from __future__ import annotations

import json
import uuid

import numpy as np
from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import ValidationError
from sqlalchemy import and_, select
from starlette.datastructures import UploadFile

from services.api.auth import Principal, PrincipalDep
from services.api.deps import image_for
from services.api.errors import UPLOAD_ERROR_RESPONSES, ApiError
from services.api.routes.images import thumbnail_url
from services.api.schemas import SearchHitPublic, SearchProcedurePublic, SearchPublic, SearchRequest
from services.api.uploads import check_upload, read_limited_form
from services.catalog.models import Image, Prediction, Procedure
from services.coverage.landmarks import known_landmark_codes
from services.db import unit_of_work
from services.embedding import open_image
from services.runtime import Runtime
from services.vectors.tenancy import site_filter

router = APIRouter()

# Above this many matching procedures the vector filter uses only the site and the label, and
# the procedure filters are applied to an over-fetched candidate list in the catalog join.
MAX_PROCEDURE_IDS_IN_FILTER = 1000
OVERFETCH_FACTOR = 10

SEARCH_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/SearchRequest"}},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {"type": "string", "format": "binary", "description": "Query image (JPEG, PNG, TIFF)."},
                        "filters": {
                            "type": "string",
                            "description": "SearchRequest fields as a JSON object, without image_id.",
                            "example": '{"kind": "colonoscopy", "landmark": "polyp", "limit": 5}',
                        },
                    },
                }
            },
        },
    }
}


@router.post("/v1/search", tags=["search"], responses=UPLOAD_ERROR_RESPONSES, openapi_extra=SEARCH_BODY)
async def search(request: Request, principal: PrincipalDep) -> SearchPublic:
    """Find the site's images most similar to a stored image (JSON `image_id`) or an uploaded `file`.

    Filters: procedure kind, performed date range, predicted landmark and procedure. A site key
    searches only its own site's images; the admin key names the site with `site_id`.
    """
    runtime: Runtime = request.app.state.runtime
    content_type = request.headers.get("content-type", "")
    file_data: bytes | None = None
    if content_type.startswith("multipart/form-data"):
        form = await read_limited_form(request, runtime.settings.upload_max_bytes, max_files=1)
        try:
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                raise ApiError(422, "invalid_upload", "no query image: send it in the multipart field `file`")
            file_data = await upload.read()
            filters = form.get("filters")
            raw = _parse_json(filters if isinstance(filters, str) else "{}", "filters")
        finally:
            await form.close()
    elif content_type.startswith("application/json"):
        raw = _parse_json((await request.body()).decode("utf-8", errors="replace"), "body")
    else:
        raise ApiError(422, "invalid_request", "send a JSON body with image_id, or a multipart body with a file")

    try:
        body = SearchRequest.model_validate(raw)
    except ValidationError as error:
        details = [{"location": list(item["loc"]), "message": item["msg"], "type": item["type"]} for item in error.errors()]
        raise ApiError(422, "invalid_request", "the search request does not match the schema", details) from None
    if (file_data is None) == (body.image_id is None):
        raise ApiError(422, "invalid_request", "give exactly one query: image_id in a JSON body, or an uploaded file")
    if body.landmark is not None and body.landmark not in known_landmark_codes():
        raise ApiError(
            422, "invalid_value", f"unknown landmark {body.landmark!r}: use a landmark code such as 'normal-cecum'"
        )
    return await run_in_threadpool(_search, runtime, principal, body, file_data)


def _parse_json(text: str, source: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise ApiError(422, "invalid_request", f"the {source} is not valid JSON: {error}") from None
    if not isinstance(value, dict):
        raise ApiError(422, "invalid_request", f"the {source} must be a JSON object")
    return value


def _query_vector(runtime: Runtime, principal: Principal, body: SearchRequest, file_data: bytes | None) -> tuple[np.ndarray, uuid.UUID | None]:
    """Return the query vector and the site the query image belongs to, if it is a stored image."""
    if file_data is not None:
        checked = check_upload("file", file_data, runtime.settings.image_max_pixels)
        if checked.error is not None:
            raise ApiError(422, "invalid_image", f"query file: {checked.error}")
        # Decoded as the ingest path decodes stored images, so equal files give equal vectors.
        picture = open_image(
            checked.data, max_pixels=runtime.settings.image_max_pixels, draft_size=runtime.embedder.input_size
        )
        return runtime.embedder.embed([picture])[0], None

    assert body.image_id is not None
    with unit_of_work(runtime.sessions) as session:
        image = image_for(session, principal, body.image_id)
        image_site = image.procedure.site_id
    images_collection, _ = runtime.collections()
    points = runtime.vectors.retrieve(images_collection, [body.image_id])
    if not points:
        raise ApiError(
            409,
            "not_embedded",
            f"image {body.image_id} has no vector under model {runtime.model_version} yet: retry once it is embedded",
        )
    return np.asarray(points[0].vector, dtype=np.float32), image_site


def _search(runtime: Runtime, principal: Principal, body: SearchRequest, file_data: bytes | None) -> SearchPublic:
    vector, image_site = _query_vector(runtime, principal, body, file_data)
    site_id = principal.scope_site(body.site_id if body.site_id is not None else image_site)
    model_version = runtime.model_version
    images_collection, _ = runtime.collections()

    with unit_of_work(runtime.sessions) as session:
        procedures = select(Procedure.id).where(Procedure.site_id == site_id)
        if body.kind is not None:
            procedures = procedures.where(Procedure.kind == body.kind)
        if body.performed_from is not None:
            procedures = procedures.where(Procedure.performed_at >= body.performed_from)
        if body.performed_to is not None:
            procedures = procedures.where(Procedure.performed_at < body.performed_to)
        if body.procedure_id is not None:
            procedures = procedures.where(Procedure.id == body.procedure_id)
        has_relational_filter = any(
            value is not None for value in (body.kind, body.performed_from, body.performed_to, body.procedure_id)
        )

        where: dict = {}
        if body.landmark is not None:
            where["label"] = body.landmark
        fetch = body.limit + 1  # the query image itself may be the first hit
        if has_relational_filter:
            procedure_ids = [str(value) for value in session.scalars(procedures.limit(MAX_PROCEDURE_IDS_IN_FILTER + 1))]
            if not procedure_ids:
                return SearchPublic(model_version=model_version, query_image_id=body.image_id, hits=[])
            if len(procedure_ids) <= MAX_PROCEDURE_IDS_IN_FILTER:
                where["procedure_id"] = procedure_ids
            else:
                fetch = body.limit * OVERFETCH_FACTOR + 1
        hits = runtime.vectors.search(images_collection, vector, fetch, site_filter(site_id, where))
        hits = [hit for hit in hits if hit.id != body.image_id]

        # The join repeats the site and procedure filters, so a hit outside them never reaches the response.
        rows = session.execute(
            select(Image, Procedure, Prediction)
            .join(Procedure, Procedure.id == Image.procedure_id)
            .outerjoin(Prediction, and_(Prediction.image_id == Image.id, Prediction.model_version == model_version))
            .where(Image.id.in_([hit.id for hit in hits]), Procedure.id.in_(procedures))
        ).all()
        by_id = {image.id: (image, procedure, prediction) for image, procedure, prediction in rows}
        results = []
        for hit in hits:
            if hit.id not in by_id:
                continue
            image, procedure, prediction = by_id[hit.id]
            results.append(
                SearchHitPublic(
                    image_id=image.id,
                    similarity=round(hit.score, 6),
                    landmark_code=prediction.landmark_code if prediction is not None else None,
                    prediction_score=round(prediction.score, 4) if prediction is not None else None,
                    procedure=SearchProcedurePublic.model_validate(procedure, from_attributes=True),
                    thumbnail_url=thumbnail_url(image.id),
                )
            )
            if len(results) == body.limit:
                break
    return SearchPublic(model_version=model_version, query_image_id=body.image_id, hits=results)
