"""The FastAPI application: procedures, image uploads and coverage."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Annotated

import structlog
from fastapi import Depends, FastAPI, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException

from services.api.schemas import (
    CoveragePublic,
    ErrorPublic,
    ImagePublic,
    PredictionPublic,
    ProcedureCreate,
    ProcedurePublic,
    UploadPublic,
)
from services.catalog.models import Image, ImageStatus, Prediction, Procedure
from services.catalog.queries import CatalogError, get_or_create_procedure, get_or_create_site
from services.coverage.landmarks import UnknownLandmarkSetError
from services.coverage.report import procedure_coverage
from services.db import unit_of_work
from services.ingest.dispatch import EmbeddingQueue, make_queue
from services.ingest.service import FileOutcome, UploadedFile, add_images
from services.runtime import Runtime
from services.schema import ensure_schema
from services.settings import Settings

logger = structlog.get_logger(__name__)


class ApiError(Exception):
    """An error answered with the common JSON error shape."""

    def __init__(self, status_code: int, code: str, message: str, details: object = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.code = code
        self.message = message
        self.details = details


def _error_response(status_code: int, code: str, message: str, details: object = None) -> JSONResponse:
    return JSONResponse(
        status_code=status_code, content={"error": {"code": code, "message": message, "details": details}}
    )


ERROR_RESPONSES = {
    404: {"model": ErrorPublic, "description": "Not found"},
    413: {"model": ErrorPublic, "description": "Request too large"},
    422: {"model": ErrorPublic, "description": "Invalid request"},
}


def create_app(
    settings: Settings, runtime: Runtime | None = None, queue: EmbeddingQueue | None = None
) -> FastAPI:
    """Build the app; the runtime and queue are created at startup unless given."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.runtime = runtime if runtime is not None else Runtime(settings)
        ensure_schema(app.state.runtime)
        app.state.queue = queue if queue is not None else make_queue(app.state.runtime)
        yield
        app.state.queue.close()
        if runtime is None:
            app.state.runtime.close()

    app = FastAPI(
        title="endodoc",
        version="0.1.0",
        description="Photo-documentation coverage of GI endoscopy procedures.",
        lifespan=lifespan,
        responses=ERROR_RESPONSES,
    )

    @app.exception_handler(ApiError)
    async def handle_api_error(_request: Request, error: ApiError) -> JSONResponse:
        return _error_response(error.status_code, error.code, error.message, error.details)

    @app.exception_handler(StarletteHTTPException)
    async def handle_http_error(_request: Request, error: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code, "http_error")
        return _error_response(error.status_code, code, str(error.detail))

    @app.exception_handler(RequestValidationError)
    async def handle_validation_error(_request: Request, error: RequestValidationError) -> JSONResponse:
        details = [
            {"location": list(item["loc"]), "message": item["msg"], "type": item["type"]} for item in error.errors()
        ]
        return _error_response(422, "invalid_request", "the request does not match the schema", details)

    @app.exception_handler(CatalogError)
    @app.exception_handler(UnknownLandmarkSetError)
    async def handle_catalog_error(_request: Request, error: Exception) -> JSONResponse:
        return _error_response(422, "invalid_value", str(error))

    _add_routes(app, settings)
    return app


def get_runtime(request: Request) -> Runtime:
    return request.app.state.runtime


def get_session(request: Request) -> Iterator[Session]:
    with unit_of_work(get_runtime(request).sessions) as session:
        yield session


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
SessionDep = Annotated[Session, Depends(get_session)]


def _procedure_or_404(session: Session, procedure_id: uuid.UUID) -> Procedure:
    procedure = session.get(Procedure, procedure_id)
    if procedure is None:
        raise ApiError(404, "not_found", f"procedure {procedure_id} not found")
    return procedure


def _add_routes(app: FastAPI, settings: Settings) -> None:
    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, str]:
        """Report that the API process is up."""
        return {"status": "ok"}

    @app.post("/v1/procedures", status_code=status.HTTP_201_CREATED, tags=["procedures"])
    def create_procedure(body: ProcedureCreate, session: SessionDep) -> ProcedurePublic:
        """Create a procedure, or return the site's existing one with the same external id."""
        site = get_or_create_site(session, body.site)
        procedure, _ = get_or_create_procedure(
            session, site, body.external_id, body.kind, body.landmark_set, body.performed_at
        )
        return ProcedurePublic.model_validate(procedure)

    @app.get("/v1/procedures/{procedure_id}", tags=["procedures"])
    def get_procedure(procedure_id: uuid.UUID, session: SessionDep) -> ProcedurePublic:
        """Return one procedure."""
        return ProcedurePublic.model_validate(_procedure_or_404(session, procedure_id))

    @app.post(
        "/v1/procedures/{procedure_id}/images",
        status_code=status.HTTP_202_ACCEPTED,
        tags=["images"],
        openapi_extra={
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
        },
    )
    async def upload_images(procedure_id: uuid.UUID, request: Request) -> UploadPublic:
        """Upload images (multipart field `files`, repeated); they are embedded in the background."""
        runtime: Runtime = request.app.state.runtime
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > settings.upload_max_bytes:
            raise ApiError(
                413, "too_large", f"upload of {declared} bytes exceeds the limit of {settings.upload_max_bytes} bytes"
            )
        try:
            form = await request.form(
                max_files=settings.upload_max_files, max_fields=10, max_part_size=settings.upload_max_bytes
            )
        except MultiPartException as error:
            raise ApiError(413 if "Too many" in error.message else 400, "invalid_upload", error.message) from None
        uploads = [item for item in form.getlist("files") if isinstance(item, UploadFile)]
        if not uploads:
            raise ApiError(422, "invalid_upload", "no files in the request: send images in the multipart field `files`")
        files = [UploadedFile(filename=upload.filename or "unnamed", data=await upload.read()) for upload in uploads]
        await form.close()
        outcomes = await run_in_threadpool(_store_uploads, runtime, procedure_id, files)
        request.app.state.queue.enqueue([outcome.image_id for outcome in outcomes if outcome.status == ImageStatus.QUEUED])

        body = UploadPublic(procedure_id=procedure_id, images=[outcome.__dict__ for outcome in outcomes])
        if all(outcome.status == ImageStatus.FAILED for outcome in outcomes):
            raise ApiError(
                422,
                "invalid_image",
                "; ".join(f"{outcome.filename}: {outcome.error}" for outcome in outcomes),
                body.model_dump(mode="json"),
            )
        return body

    @app.get("/v1/procedures/{procedure_id}/coverage", tags=["coverage"])
    def get_coverage(procedure_id: uuid.UUID, session: SessionDep, runtime: RuntimeDep) -> CoveragePublic:
        """Report which required landmarks of the procedure are documented, missing or pending."""
        procedure = _procedure_or_404(session, procedure_id)
        report = procedure_coverage(session, procedure, runtime.model_version, settings.coverage.min_score)
        return CoveragePublic.model_validate(report.as_dict())

    @app.get("/v1/images/{image_id}", tags=["images"])
    def get_image(image_id: uuid.UUID, session: SessionDep, runtime: RuntimeDep) -> ImagePublic:
        """Return an image's status and its prediction under the current model."""
        image = session.get(Image, image_id)
        if image is None:
            raise ApiError(404, "not_found", f"image {image_id} not found")
        prediction = session.scalar(
            select(Prediction).where(Prediction.image_id == image.id, Prediction.model_version == runtime.model_version)
        )
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
        )


def _store_uploads(runtime: Runtime, procedure_id: uuid.UUID, files: list[UploadedFile]) -> list[FileOutcome]:
    """Validate and store the files in one committed transaction, before anything is enqueued."""
    with unit_of_work(runtime.sessions) as session:
        _procedure_or_404(session, procedure_id)
        return add_images(session, runtime, procedure_id, files)
