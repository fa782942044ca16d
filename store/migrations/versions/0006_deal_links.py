"""deal_links: ids other systems know a deal by (events name a deal by deal_ref)

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04 19:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

import store.types


revision: str = '0006'
down_revision: str | None = '0005'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('deal_links',
    sa.Column('namespace', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('external_id', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('deal_id', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('event_id', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
    sa.Column('linked_at', store.types.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('namespace', 'external_id')
    )
    with op.batch_alter_table('deal_links', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_deal_links_deal_id'), ['deal_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('deal_links', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_deal_links_deal_id'))

    op.drop_table('deal_links')
