"""Add site API keys, clinician reviews of image landmarks, and the source of promoted references.

Site API keys are stored as the sha256 of the secret. A review records who confirmed or
corrected an image's landmark and when. A reference image promoted from a reviewed
procedure image keeps that image's id in `source_image_id`.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

review_action = sa.Enum("confirm", "correct", name="review_action")


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("site_id", sa.Uuid(), sa.ForeignKey("sites.id", ondelete="CASCADE"), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("prefix", sa.String(16), nullable=False),
        sa.Column("secret_sha256", sa.String(64), nullable=False, unique=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_api_keys_site_id", "api_keys", ["site_id"])
    op.create_table(
        "image_reviews",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("image_id", sa.Uuid(), sa.ForeignKey("images.id", ondelete="CASCADE"), nullable=False),
        sa.Column("action", review_action, nullable=False),
        sa.Column("landmark_code", sa.String(64), nullable=False),
        sa.Column("predicted_code", sa.String(64), nullable=True),
        sa.Column("model_version", sa.String(64), nullable=True),
        sa.Column("reviewer", sa.String(200), nullable=False),
        sa.Column("api_key_id", sa.Uuid(), sa.ForeignKey("api_keys.id", ondelete="SET NULL"), nullable=True),
        sa.Column("comment", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_image_reviews_image_created_at", "image_reviews", ["image_id", "created_at"])
    with op.batch_alter_table("reference_images") as batch:
        batch.add_column(sa.Column("source_image_id", sa.Uuid(), nullable=True))
        batch.create_foreign_key(
            "fk_reference_images_source_image_id", "images", ["source_image_id"], ["id"], ondelete="SET NULL"
        )
        batch.create_index("ix_reference_images_source_image_id", ["source_image_id"])


def downgrade() -> None:
    with op.batch_alter_table("reference_images") as batch:
        batch.drop_index("ix_reference_images_source_image_id")
        batch.drop_constraint("fk_reference_images_source_image_id", type_="foreignkey")
        batch.drop_column("source_image_id")
    op.drop_index("ix_image_reviews_image_created_at", table_name="image_reviews")
    op.drop_table("image_reviews")
    review_action.drop(op.get_bind(), checkfirst=True)
    op.drop_index("ix_api_keys_site_id", table_name="api_keys")
    op.drop_table("api_keys")
