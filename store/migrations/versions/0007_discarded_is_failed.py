"""events discarded from the dead letters are 'failed' (a status of the contract's list)

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04 19:40:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0007'
down_revision: str | None = '0006'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        sa.text(
            "UPDATE events SET status = 'failed', "
            "last_error = 'discarded by an operator (the reason is in the event''s history)' "
            "WHERE status = 'discarded'"
        )
    )


def downgrade() -> None:
    op.execute(
        sa.text(
            "UPDATE events SET status = 'discarded' WHERE status = 'failed' "
            "AND id IN (SELECT event_id FROM event_attempts WHERE kind = 'discarded')"
        )
    )
