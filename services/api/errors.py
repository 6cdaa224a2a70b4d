"""The one JSON error shape of the API: {"error": {"code", "message", "details"}}."""

from __future__ import annotations

from fastapi.responses import JSONResponse

from services.api.schemas import ErrorPublic


class ApiError(Exception):
    """An error returned to the client in the common JSON error shape."""

    def __init__(self, status_code: int, code: str, message: str, details: object = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.code = code
        self.message = message
        self.details = details


def error_response(status_code: int, code: str, message: str, details: object = None) -> JSONResponse:
    return JSONResponse(
        status_code=status_code, content={"error": {"code": code, "message": message, "details": details}}
    )


def not_found(resource: str, value: object) -> ApiError:
    return ApiError(404, "not_found", f"{resource} {value} not found")


ERROR_RESPONSES = {
    401: {"model": ErrorPublic, "description": "Missing, invalid or revoked API key"},
    403: {"model": ErrorPublic, "description": "The API key may not access this site or route"},
    404: {"model": ErrorPublic, "description": "Not found"},
    422: {"model": ErrorPublic, "description": "Invalid request"},
}
UPLOAD_ERROR_RESPONSES = {
    413: {"model": ErrorPublic, "description": "Request larger than the byte limit, or too many files"},
}
