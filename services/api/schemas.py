"""Request and response bodies of the HTTP API."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from services.catalog.models import ImageStatus, ProcedureKind


class ErrorBody(BaseModel):
    code: str = Field(examples=["not_found"])
    message: str = Field(examples=["procedure 0b9e... not found"])
    details: Any | None = None


class ErrorPublic(BaseModel):
    """The one error shape of every endpoint."""

    error: ErrorBody


class ProcedureCreate(BaseModel):
    site: str = Field(description="Site slug; created when new.", examples=["st-olav-endoscopy"])
    external_id: str = Field(min_length=1, max_length=128, description="Procedure id in the hospital's system.")
    kind: ProcedureKind
    landmark_set: str = Field(examples=["colonoscopy-completion"])
    performed_at: datetime


class ProcedurePublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    site_id: uuid.UUID
    external_id: str
    kind: ProcedureKind
    landmark_set: str
    performed_at: datetime
    created_at: datetime


class FileOutcomePublic(BaseModel):
    filename: str
    image_id: uuid.UUID
    status: ImageStatus
    error: str | None = None
    duplicate: bool = False


class UploadPublic(BaseModel):
    procedure_id: uuid.UUID
    images: list[FileOutcomePublic]


class PredictionPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    landmark_code: str
    score: float
    model_version: str
    evidence: list[dict[str, Any]]


class ImagePublic(BaseModel):
    id: uuid.UUID
    procedure_id: uuid.UUID
    sha256: str
    status: ImageStatus
    error: str | None
    width: int | None
    height: int | None
    created_at: datetime
    embedded_at: datetime | None
    prediction: PredictionPublic | None


class EvidencePublic(BaseModel):
    reference_id: str
    label: str
    similarity: float


class LandmarkCoveragePublic(BaseModel):
    code: str
    name: str
    status: Literal["documented", "missing", "pending"]
    image_id: str | None
    score: float | None
    evidence: list[EvidencePublic]


class ObservedClassPublic(BaseModel):
    code: str
    name: str
    count: int


class CoveragePublic(BaseModel):
    procedure_id: str
    external_id: str
    landmark_set: str
    model_version: str
    coverage: float = Field(description="Documented share of the required landmarks, 0 to 1.")
    landmarks: list[LandmarkCoveragePublic]
    observed: list[ObservedClassPublic]
    images: dict[str, int] = Field(description="Image count per status.")
