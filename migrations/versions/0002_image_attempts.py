"""Count embedding attempts per image and record when its status last changed.

Workers increment `attempts` when they start embedding an image, so a redelivered task can
give up after a bounded number of tries, and reconciliation finds images stuck in `queued`
by `status_changed_at`.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("images") as batch:
        batch.add_column(sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("status_changed_at", sa.DateTime(timezone=True), nullable=True))
    op.execute("UPDATE images SET status_changed_at = created_at")
    op.create_index("ix_images_status_changed_at", "images", ["status", "status_changed_at"])


def downgrade() -> None:
    op.drop_index("ix_images_status_changed_at", table_name="images")
    with op.batch_alter_table("images") as batch:
        batch.drop_column("status_changed_at")
        batch.drop_column("attempts")
