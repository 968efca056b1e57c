"""sync_runs.listed_at, detail_mode, detail_quiet and throttled_seconds: when a cycle's listing was
stored, which detail mode it ran in and what the auto detail policy had learned, and how long
Cloudflare's 429s held its requests back

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26 08:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = '0005'
down_revision: str | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# As in 0001: microseconds on MariaDB, zoned on PostgreSQL.
UTC_TIMESTAMP = sa.DateTime(timezone=True).with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


def upgrade() -> None:
    # Older cycles ran before either was recorded: no mode, no throttled time.
    op.add_column('sync_runs', sa.Column('listed_at', UTC_TIMESTAMP, nullable=True))
    op.add_column('sync_runs', sa.Column('detail_mode', sa.String(length=16), nullable=True))
    op.add_column('sync_runs', sa.Column('detail_quiet', sa.Integer(), nullable=True))
    op.add_column('sync_runs', sa.Column('throttled_seconds', sa.Double(), nullable=False, server_default='0'))


def downgrade() -> None:
    # Plain ALTER TABLEs, as in 0004: a batch rebuild would rename the table under the views of 0003.
    op.drop_column('sync_runs', 'throttled_seconds')
    op.drop_column('sync_runs', 'detail_quiet')
    op.drop_column('sync_runs', 'detail_mode')
    op.drop_column('sync_runs', 'listed_at')
