"""deal migrations (bulk moves of existing deals)

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04 14:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

import store.types


revision: str = '0003'
down_revision: str | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('deal_migrations',
    sa.Column('id', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
    sa.Column('source_pipeline_id', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
    sa.Column('target_pipeline_id', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
    sa.Column('target_version', sa.Integer(), nullable=False),
    sa.Column('stage_map', sa.JSON(), nullable=False),
    sa.Column('filter', sa.JSON(), nullable=False),
    sa.Column('dry_run', sa.Boolean(), nullable=False),
    sa.Column('batch_size', sa.Integer(), nullable=False),
    sa.Column('rate_per_second', sa.Float(), nullable=False),
    sa.Column('status', sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
    sa.Column('total', sa.Integer(), nullable=False),
    sa.Column('migrated', sa.Integer(), nullable=False),
    sa.Column('skipped', sa.Integer(), nullable=False),
    sa.Column('failed', sa.Integer(), nullable=False),
    sa.Column('cursor', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=True),
    sa.Column('errors', sa.JSON(), nullable=False),
    sa.Column('report', sa.JSON(), nullable=True),
    sa.Column('created_by', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=True),
    sa.Column('created_at', store.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('started_at', store.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('finished_at', store.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('updated_at', store.types.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('deal_migrations', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_deal_migrations_source_pipeline_id'), ['source_pipeline_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_deal_migrations_status'), ['status'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('deal_migrations', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_deal_migrations_status'))
        batch_op.drop_index(batch_op.f('ix_deal_migrations_source_pipeline_id'))
    op.drop_table('deal_migrations')
