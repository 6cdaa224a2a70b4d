"""The FastAPI application: sites and keys, procedures, images, coverage, search, review and pages."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import quote

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException

from services.api.errors import ERROR_RESPONSES, ApiError, error_response
from services.api.routes import images, procedures, search, sites, ui
from services.api.schemas import SearchRequest
from services.catalog.queries import CatalogError
from services.coverage.landmarks import UnknownLandmarkSetError
from services.embedding.errors import WeightsError
from services.ingest.dispatch import EmbeddingQueue, make_queue
from services.runtime import Runtime
from services.schema import ensure_schema
from services.settings import Settings
from services.vectors import VectorIndexError

logger = structlog.get_logger(__name__)

DESCRIPTION = """\
Photo-documentation coverage of GI endoscopy procedures.

Every route except `/healthz` needs an API key in the header `Authorization: Bearer KEY`.
A site key reads and changes only its own site's procedures, images and vectors. The admin
key (`ENDODOC_ADMIN_API_KEY`) manages sites and keys and may read every site. Errors have
one shape: `{"error": {"code", "message", "details"}}`.
"""


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
        version="0.2.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        responses=ERROR_RESPONSES,
    )
    _add_error_handlers(app)

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, str]:
        """Report that the API process is up (no key needed)."""
        return {"status": "ok"}

    for module in (sites, procedures, images, search, ui):
        app.include_router(module.router)
    _add_manual_schemas(app)
    return app


def _add_manual_schemas(app: FastAPI) -> None:
    """Add the schemas of bodies that routes parse themselves (search takes JSON or multipart) to OpenAPI."""
    generate = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = generate()
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        body = SearchRequest.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, definition in body.pop("$defs", {}).items():
            components.setdefault(name, definition)
        components["SearchRequest"] = body
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def handle_api_error(request: Request, error: ApiError) -> Response:
        if error.status_code == 401 and request.url.path.startswith("/ui/"):
            return RedirectResponse(f"/ui/login?next={quote(request.url.path)}", status_code=303)
        return error_response(error.status_code, error.code, error.message, error.details)

    @app.exception_handler(StarletteHTTPException)
    async def handle_http_error(_request: Request, error: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code, "http_error")
        return error_response(error.status_code, code, str(error.detail))

    @app.exception_handler(RequestValidationError)
    async def handle_validation_error(_request: Request, error: RequestValidationError) -> JSONResponse:
        details = [
            {"location": list(item["loc"]), "message": item["msg"], "type": item["type"]} for item in error.errors()
        ]
        return error_response(422, "invalid_request", "the request does not match the schema", details)

    @app.exception_handler(CatalogError)
    @app.exception_handler(UnknownLandmarkSetError)
    async def handle_catalog_error(_request: Request, error: Exception) -> JSONResponse:
        return error_response(422, "invalid_value", str(error))

    @app.exception_handler(WeightsError)
    async def handle_weights_error(request: Request, error: WeightsError) -> JSONResponse:
        logger.error("model_unavailable", path=request.url.path, error=str(error))
        return error_response(503, "model_unavailable", f"the embedding model could not be loaded: {error}")

    @app.exception_handler(VectorIndexError)
    async def handle_vector_error(request: Request, error: VectorIndexError) -> JSONResponse:
        logger.error("vector_store_unavailable", path=request.url.path, error=str(error))
        return error_response(503, "vector_store_unavailable", str(error))

    @app.exception_handler(OperationalError)
    async def handle_database_error(request: Request, error: OperationalError) -> JSONResponse:
        logger.error("database_unavailable", path=request.url.path, error=str(error.orig))
        return error_response(
            503, "database_unavailable", "the catalog database is unavailable; retry later or check ENDODOC_DATABASE_URL"
        )

    @app.exception_handler(PoolTimeoutError)
    async def handle_pool_timeout(request: Request, error: PoolTimeoutError) -> JSONResponse:
        # Every pooled connection stayed checked out for the pool timeout: the server is overloaded,
        # so the client should retry later. It is no server fault worth a traceback.
        logger.warning("database_pool_exhausted", path=request.url.path, error=str(error))
        return error_response(
            503, "database_busy", "every catalog database connection is in use; retry the request in a few seconds"
        )

    @app.exception_handler(Exception)
    async def handle_unexpected_error(request: Request, error: Exception) -> JSONResponse:
        logger.exception("request_failed", path=request.url.path, error_type=type(error).__name__)
        return error_response(500, "internal_error", "the server failed to handle the request; see the server log")
