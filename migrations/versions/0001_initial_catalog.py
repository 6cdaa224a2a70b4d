"""Create the catalog: sites, procedures, images, predictions and reference images.

Revision ID: 0001
Revises:
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

procedure_kind = sa.Enum("egd", "colonoscopy", name="procedure_kind")
image_status = sa.Enum("queued", "embedded", "failed", name="image_status")


def upgrade() -> None:
    op.create_table(
        "sites",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("slug", sa.String(64), nullable=False, unique=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "procedures",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("site_id", sa.Uuid(), sa.ForeignKey("sites.id", ondelete="RESTRICT"), nullable=False),
        sa.Column("external_id", sa.String(128), nullable=False),
        sa.Column("kind", procedure_kind, nullable=False),
        sa.Column("landmark_set", sa.String(64), nullable=False),
        sa.Column("performed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("site_id", "external_id", name="uq_procedures_site_external_id"),
    )
    op.create_index("ix_procedures_site_performed_at", "procedures", ["site_id", "performed_at"])
    op.create_table(
        "images",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column(
            "procedure_id", sa.Uuid(), sa.ForeignKey("procedures.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("blob_key", sa.String(200), nullable=True),
        sa.Column("width", sa.Integer(), nullable=True),
        sa.Column("height", sa.Integer(), nullable=True),
        sa.Column("status", image_status, nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("model_version", sa.String(64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("embedded_at", sa.DateTime(timezone=True), nullable=True),
        sa.UniqueConstraint("procedure_id", "sha256", name="uq_images_procedure_sha256"),
    )
    op.create_index("ix_images_procedure_id", "images", ["procedure_id"])
    op.create_index("ix_images_status", "images", ["status"])
    op.create_table(
        "predictions",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("image_id", sa.Uuid(), sa.ForeignKey("images.id", ondelete="CASCADE"), nullable=False),
        sa.Column("landmark_code", sa.String(64), nullable=False),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("model_version", sa.String(64), nullable=False),
        sa.Column("evidence", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("image_id", "model_version", name="uq_predictions_image_model_version"),
    )
    op.create_index("ix_predictions_landmark_code", "predictions", ["landmark_code"])
    op.create_table(
        "reference_images",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("site_id", sa.Uuid(), sa.ForeignKey("sites.id", ondelete="CASCADE"), nullable=True),
        sa.Column("label", sa.String(64), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("blob_key", sa.String(200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("site_id", "sha256", name="uq_reference_images_site_sha256"),
    )
    op.create_index("ix_reference_images_site_id", "reference_images", ["site_id"])
    op.create_index("ix_reference_images_label", "reference_images", ["label"])


def downgrade() -> None:
    op.drop_table("reference_images")
    op.drop_table("predictions")
    op.drop_table("images")
    op.drop_table("procedures")
    op.drop_table("sites")
    # Dropping the tables leaves PostgreSQL's enum types behind; SQLite has none.
    image_status.drop(op.get_bind(), checkfirst=True)
    procedure_kind.drop(op.get_bind(), checkfirst=True)
