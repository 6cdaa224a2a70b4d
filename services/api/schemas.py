"""Request and response bodies of the HTTP API."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from services.catalog.models import ImageStatus, ProcedureKind, ReviewAction

Item = TypeVar("Item")
CoverageStatus = Literal["complete", "pending", "incomplete"]


class ErrorBody(BaseModel):
    code: str = Field(examples=["not_found"])
    message: str = Field(examples=["procedure 0b9e... not found"])
    details: Any | None = None


class ErrorPublic(BaseModel):
    """The one error shape of every endpoint."""

    error: ErrorBody


class Page(BaseModel, Generic[Item]):
    """One page of a list, with the total number of matching items."""

    items: list[Item]
    total: int = Field(description="Items matching the filters, over all pages.")
    limit: int
    offset: int


class SiteCreate(BaseModel):
    slug: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,63}$", examples=["st-olav-endoscopy"])
    name: str = Field(min_length=1, max_length=200, examples=["St. Olav endoscopy unit"])


class SitePublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    slug: str
    name: str
    created_at: datetime


class ApiKeyCreate(BaseModel):
    name: str = Field(min_length=1, max_length=200, description="What the key is for.", examples=["PACS bridge"])


class ApiKeyPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    site_id: uuid.UUID
    name: str
    prefix: str = Field(description="The key's first characters, to tell keys apart.")
    created_at: datetime
    revoked_at: datetime | None
    last_used_at: datetime | None


class ApiKeyCreated(ApiKeyPublic):
    secret: str = Field(description="The key itself. It is shown only in this response; store it now.")


class ProcedureCreate(BaseModel):
    site: str | None = Field(
        default=None,
        description="Site slug. A site key may leave it out (its own site); the admin key must give it.",
        examples=["st-olav-endoscopy"],
    )
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
    coverage_status: CoverageStatus | None = Field(
        default=None,
        description="complete: every required landmark documented; pending: some wait for embedding; "
        "incomplete: some are missing. Set in lists.",
    )


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


class ReviewCreate(BaseModel):
    action: ReviewAction = Field(description="confirm: the predicted landmark is right; correct: it is landmark_code.")
    landmark_code: str | None = Field(default=None, examples=["normal-cecum"])
    reviewer: str = Field(min_length=1, max_length=200, description="Who reviewed (name or staff id).")
    comment: str | None = Field(default=None, max_length=2000)

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"action": "correct", "landmark_code": "normal-cecum", "reviewer": "dr.hansen"}]}
    )


class ReviewPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    image_id: uuid.UUID
    action: ReviewAction
    landmark_code: str
    predicted_code: str | None
    model_version: str | None
    reviewer: str
    api_key_id: uuid.UUID | None
    comment: str | None
    created_at: datetime


class PromotionPublic(BaseModel):
    image_id: uuid.UUID
    reference_id: uuid.UUID
    site_id: uuid.UUID
    label: str
    model_version: str


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
    review: ReviewPublic | None = Field(default=None, description="The latest clinician review.")
    thumbnail_url: str | None = None


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
    candidate_image_id: str | None = Field(
        default=None,
        description="For a landmark not documented: the image labeled with it at the highest score below the threshold.",
    )
    candidate_score: float | None = Field(default=None, description="That image's vote share.")


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


class SearchRequest(BaseModel):
    """Filters of a similar-image search; the query is `image_id` here or an uploaded `file`."""

    image_id: uuid.UUID | None = Field(default=None, description="Search with a stored image's vector.")
    site_id: uuid.UUID | None = Field(default=None, description="Site to search; required with the admin key.")
    kind: ProcedureKind | None = None
    performed_from: datetime | None = Field(default=None, description="Procedures performed at or after.")
    performed_to: datetime | None = Field(default=None, description="Procedures performed before.")
    landmark: str | None = Field(default=None, description="Predicted landmark code of the hits.")
    procedure_id: uuid.UUID | None = None
    limit: int = Field(default=10, ge=1, le=100)

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"image_id": "7d4c1e0a-3f52-4a53-9a51-3a7c1f4f2b10", "kind": "colonoscopy", "limit": 5}]
        }
    )


class SearchProcedurePublic(BaseModel):
    id: uuid.UUID
    external_id: str
    kind: ProcedureKind
    landmark_set: str
    performed_at: datetime


class SearchHitPublic(BaseModel):
    image_id: uuid.UUID
    similarity: float = Field(description="Cosine similarity to the query, -1 to 1.")
    landmark_code: str | None = Field(description="Predicted landmark under the current model.")
    prediction_score: float | None
    procedure: SearchProcedurePublic
    thumbnail_url: str


class SearchPublic(BaseModel):
    model_version: str
    query_image_id: uuid.UUID | None
    hits: list[SearchHitPublic]


class UndocumentedProcedurePublic(BaseModel):
    id: str
    external_id: str
    performed_at: str
    status: Literal["missing", "pending"]


class LandmarkRatePublic(BaseModel):
    code: str
    name: str
    procedures: int
    documented: int
    pending: int
    rate: float | None = Field(description="Documented share of the procedures, 0 to 1.")
    undocumented: list[UndocumentedProcedurePublic]


class LandmarkSetCoveragePublic(BaseModel):
    landmark_set: str
    name: str
    procedures: int
    complete_procedures: int
    landmarks: list[LandmarkRatePublic]


class SiteCoveragePublic(BaseModel):
    site_id: str
    date_from: str | None
    date_to: str | None
    model_version: str
    procedures: int
    landmark_sets: list[LandmarkSetCoveragePublic]
