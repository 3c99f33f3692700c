"""partial index for the claim's scan order

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28

Claimable jobs are scanned by (priority DESC, id) among pending/running rows; this partial
index serves that scan so a claim does not sort the whole queue. No table is rebuilt, so the
`results` view can stay.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

CLAIMABLE = "status IN ('pending', 'running')"


def upgrade() -> None:
    op.create_index(
        "ix_jobs_claim_order", "jobs", [sa.text("priority DESC"), "id"],
        postgresql_where=sa.text(CLAIMABLE), sqlite_where=sa.text(CLAIMABLE),
    )


def downgrade() -> None:
    op.drop_index("ix_jobs_claim_order", table_name="jobs")
