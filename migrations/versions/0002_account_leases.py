"""account leases, and an index to find running ledger rows

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 00:25:45.817101
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = '0002'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# As in 0001: MariaDB/MySQL have no zoned timestamp, so naive UTC with microseconds there.
UTC_TIMESTAMP = sa.DateTime(timezone=True).with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


def upgrade() -> None:
    op.create_table('account_leases',
    sa.Column('account_id', sa.String(length=32), nullable=False),
    sa.Column('holder', sa.String(length=128), nullable=False),
    sa.Column('acquired_at', UTC_TIMESTAMP, nullable=False),
    sa.Column('expires_at', UTC_TIMESTAMP, nullable=False),
    sa.PrimaryKeyConstraint('account_id', name=op.f('pk_account_leases'))
    )
    with op.batch_alter_table('sync_runs', schema=None) as batch_op:
        batch_op.create_index('ix_sync_runs_account_outcome', ['account_id', 'outcome'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('sync_runs', schema=None) as batch_op:
        batch_op.drop_index('ix_sync_runs_account_outcome')
    op.drop_table('account_leases')
