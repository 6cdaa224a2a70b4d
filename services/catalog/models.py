"""Relational catalog: sites, API keys, procedures, images, predictions, reviews and reference images."""

from __future__ import annotations

import enum
import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    DateTime,
    Dialect,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    Uuid,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on every backend.

    PostgreSQL keeps the offset, but SQLite stores naive text, so values are converted to UTC
    when written and read back as UTC-aware datetimes. A naive value is taken to be UTC.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    pass


class ProcedureKind(enum.StrEnum):
    EGD = "egd"
    COLONOSCOPY = "colonoscopy"


class ImageStatus(enum.StrEnum):
    QUEUED = "queued"
    EMBEDDED = "embedded"
    FAILED = "failed"


def _enum(cls: type[enum.Enum], name: str) -> Enum:
    """Store an enum by its values (`egd`, not `EGD`) under a named database type."""
    return Enum(cls, name=name, values_callable=lambda members: [m.value for m in members])


class Site(Base):
    """A hospital or endoscopy unit; the tenant of every procedure and vector."""

    __tablename__ = "sites"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    slug: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    procedures: Mapped[list[Procedure]] = relationship(back_populates="site")


class Procedure(Base):
    """One endoscopy examination, identified at its site by an external id."""

    __tablename__ = "procedures"
    __table_args__ = (
        UniqueConstraint("site_id", "external_id", name="uq_procedures_site_external_id"),
        Index("ix_procedures_site_performed_at", "site_id", "performed_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    site_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("sites.id", ondelete="RESTRICT"))
    external_id: Mapped[str] = mapped_column(String(128))
    kind: Mapped[ProcedureKind] = mapped_column(_enum(ProcedureKind, "procedure_kind"))
    landmark_set: Mapped[str] = mapped_column(String(64))
    performed_at: Mapped[datetime] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    site: Mapped[Site] = relationship(back_populates="procedures")
    images: Mapped[list[Image]] = relationship(back_populates="procedure", order_by="Image.created_at")


class Image(Base):
    """A photo taken during a procedure; its UUID is also its vector point id."""

    __tablename__ = "images"
    __table_args__ = (
        UniqueConstraint("procedure_id", "sha256", name="uq_images_procedure_sha256"),
        Index("ix_images_status", "status"),
        Index("ix_images_status_changed_at", "status", "status_changed_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    procedure_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("procedures.id", ondelete="CASCADE"), index=True)
    sha256: Mapped[str] = mapped_column(String(64))
    blob_key: Mapped[str | None] = mapped_column(String(200))
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
    status: Mapped[ImageStatus] = mapped_column(_enum(ImageStatus, "image_status"), default=ImageStatus.QUEUED)
    error: Mapped[str | None] = mapped_column(Text)
    model_version: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    embedded_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # Embedding attempts started, so a task redelivered after worker crashes gives up in the end.
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    status_changed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=utcnow)

    procedure: Mapped[Procedure] = relationship(back_populates="images")
    predictions: Mapped[list[Prediction]] = relationship(back_populates="image", cascade="all, delete-orphan")


class Prediction(Base):
    """The landmark label one model version gave an image, with its vote share and evidence."""

    __tablename__ = "predictions"
    __table_args__ = (UniqueConstraint("image_id", "model_version", name="uq_predictions_image_model_version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    image_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"))
    landmark_code: Mapped[str] = mapped_column(String(64), index=True)
    score: Mapped[float] = mapped_column(Float)
    model_version: Mapped[str] = mapped_column(String(64))
    # Nearest reference images that voted for the label: [{"reference_id", "label", "similarity"}].
    evidence: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    image: Mapped[Image] = relationship(back_populates="predictions")


class ReferenceImage(Base):
    """A labeled gallery image; a null site means the gallery shared by every site."""

    __tablename__ = "reference_images"
    __table_args__ = (UniqueConstraint("site_id", "sha256", name="uq_reference_images_site_sha256"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    site_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("sites.id", ondelete="CASCADE"), index=True)
    label: Mapped[str] = mapped_column(String(64), index=True)
    sha256: Mapped[str] = mapped_column(String(64))
    blob_key: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # The reviewed procedure image this reference was promoted from; null for gallery uploads.
    source_image_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("images.id", ondelete="SET NULL"), index=True
    )


class ApiKey(Base):
    """A site's API key. Only the sha256 of the secret is stored; the prefix identifies it in lists."""

    __tablename__ = "api_keys"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    site_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("sites.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    prefix: Mapped[str] = mapped_column(String(16))
    secret_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class ReviewAction(enum.StrEnum):
    CONFIRM = "confirm"
    CORRECT = "correct"


class ImageReview(Base):
    """A clinician's confirmation or correction of an image's landmark; the latest one counts."""

    __tablename__ = "image_reviews"
    __table_args__ = (Index("ix_image_reviews_image_created_at", "image_id", "created_at"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    image_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"))
    action: Mapped[ReviewAction] = mapped_column(_enum(ReviewAction, "review_action"))
    landmark_code: Mapped[str] = mapped_column(String(64))
    # The model's label when the review was made, and the model version that gave it.
    predicted_code: Mapped[str | None] = mapped_column(String(64))
    model_version: Mapped[str | None] = mapped_column(String(64))
    reviewer: Mapped[str] = mapped_column(String(200))
    api_key_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("api_keys.id", ondelete="SET NULL"))
    comment: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
