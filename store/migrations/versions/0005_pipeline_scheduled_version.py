"""pipelines.scheduled_version (a new version of a live pipeline, live from go_live_at)

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06 10:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0005'
down_revision: str | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('pipelines', schema=None) as batch_op:
        batch_op.add_column(sa.Column('scheduled_version', sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('pipelines', schema=None) as batch_op:
        batch_op.drop_column('scheduled_version')
