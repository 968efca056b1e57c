"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-22 23:49:46.563935
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql, postgresql

revision: str = '0001'
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Spelled out here rather than imported from archiver.archive.models, so this migration keeps meaning
# what it meant when it was written. MariaDB/MySQL have no zoned timestamp: naive UTC, microseconds.
UTC_TIMESTAMP = sa.DateTime(timezone=True).with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
JSON_DOCUMENT = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table('browser_session_versions',
    sa.Column('id', BIG_ID, autoincrement=True, nullable=False),
    sa.Column('account_id', sa.String(length=32), nullable=False),
    sa.Column('session_id', sa.String(length=36), nullable=False),
    sa.Column('run_id', sa.BigInteger(), nullable=True),
    sa.Column('observed_at', UTC_TIMESTAMP, nullable=False),
    sa.Column('source', sa.String(length=8), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('start_time', UTC_TIMESTAMP, nullable=True),
    sa.Column('end_time', UTC_TIMESTAMP, nullable=True),
    sa.Column('connection_start_time', UTC_TIMESTAMP, nullable=True),
    sa.Column('connection_end_time', UTC_TIMESTAMP, nullable=True),
    sa.Column('last_updated', UTC_TIMESTAMP, nullable=True),
    sa.Column('connection_id', sa.String(length=128), nullable=True),
    sa.Column('close_reason', sa.String(length=64), nullable=True),
    sa.Column('close_reason_text', sa.String(length=1024), nullable=True),
    sa.Column('devtools_frontend_url', sa.Text(), nullable=True),
    sa.Column('web_socket_debugger_url', sa.Text(), nullable=True),
    sa.Column('raw', JSON_DOCUMENT, nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_browser_session_versions'))
    )
    with op.batch_alter_table('browser_session_versions', schema=None) as batch_op:
        batch_op.create_index('ix_browser_session_versions_observed_at', ['observed_at'], unique=False)
        batch_op.create_index('ix_browser_session_versions_session', ['account_id', 'session_id', 'observed_at'], unique=False)

    op.create_table('browser_sessions',
    sa.Column('account_id', sa.String(length=32), nullable=False),
    sa.Column('session_id', sa.String(length=36), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('first_seen_at', UTC_TIMESTAMP, nullable=False),
    sa.Column('last_seen_at', UTC_TIMESTAMP, nullable=False),
    sa.Column('last_detail_at', UTC_TIMESTAMP, nullable=True),
    sa.Column('vanished_at', UTC_TIMESTAMP, nullable=True),
    sa.Column('gone_at', UTC_TIMESTAMP, nullable=True),
    sa.Column('detail_due', sa.String(length=16), nullable=True),
    sa.Column('detail_attempts', sa.Integer(), nullable=False),
    sa.Column('last_run_id', sa.BigInteger(), nullable=True),
    sa.Column('start_time', UTC_TIMESTAMP, nullable=True),
    sa.Column('end_time', UTC_TIMESTAMP, nullable=True),
    sa.Column('connection_start_time', UTC_TIMESTAMP, nullable=True),
    sa.Column('connection_end_time', UTC_TIMESTAMP, nullable=True),
    sa.Column('last_updated', UTC_TIMESTAMP, nullable=True),
    sa.Column('connection_id', sa.String(length=128), nullable=True),
    sa.Column('close_reason', sa.String(length=64), nullable=True),
    sa.Column('close_reason_text', sa.String(length=1024), nullable=True),
    sa.Column('devtools_frontend_url', sa.Text(), nullable=True),
    sa.Column('web_socket_debugger_url', sa.Text(), nullable=True),
    sa.Column('raw', JSON_DOCUMENT, nullable=True),
    sa.PrimaryKeyConstraint('account_id', 'session_id', name=op.f('pk_browser_sessions'))
    )
    with op.batch_alter_table('browser_sessions', schema=None) as batch_op:
        batch_op.create_index('ix_browser_sessions_account_detail_due', ['account_id', 'detail_due'], unique=False)
        batch_op.create_index('ix_browser_sessions_account_status', ['account_id', 'status'], unique=False)
        batch_op.create_index('ix_browser_sessions_end_time', ['end_time'], unique=False)
        batch_op.create_index('ix_browser_sessions_start_time', ['start_time'], unique=False)

    op.create_table('rejected_records',
    sa.Column('id', BIG_ID, autoincrement=True, nullable=False),
    sa.Column('account_id', sa.String(length=32), nullable=False),
    sa.Column('run_id', sa.BigInteger(), nullable=True),
    sa.Column('rejected_at', UTC_TIMESTAMP, nullable=False),
    sa.Column('source', sa.String(length=8), nullable=False),
    sa.Column('session_id', sa.String(length=36), nullable=True),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('body', sa.Text(), nullable=False),
    sa.Column('kept', sa.Boolean(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_rejected_records'))
    )
    with op.batch_alter_table('rejected_records', schema=None) as batch_op:
        batch_op.create_index('ix_rejected_records_rejected_at', ['rejected_at'], unique=False)

    op.create_table('sync_runs',
    sa.Column('id', BIG_ID, autoincrement=True, nullable=False),
    sa.Column('account_id', sa.String(length=32), nullable=False),
    sa.Column('worker', sa.String(length=128), nullable=False),
    sa.Column('started_at', UTC_TIMESTAMP, nullable=False),
    sa.Column('finished_at', UTC_TIMESTAMP, nullable=True),
    sa.Column('outcome', sa.String(length=16), nullable=False),
    sa.Column('listing_complete', sa.Boolean(), nullable=False),
    sa.Column('pages', sa.Integer(), nullable=False),
    sa.Column('listed', sa.Integer(), nullable=False),
    sa.Column('new', sa.Integer(), nullable=False),
    sa.Column('changed', sa.Integer(), nullable=False),
    sa.Column('vanished', sa.Integer(), nullable=False),
    sa.Column('reappeared', sa.Integer(), nullable=False),
    sa.Column('details_fetched', sa.Integer(), nullable=False),
    sa.Column('details_gone', sa.Integer(), nullable=False),
    sa.Column('details_failed', sa.Integer(), nullable=False),
    sa.Column('details_carried', sa.Integer(), nullable=False),
    sa.Column('rejected', sa.Integer(), nullable=False),
    sa.Column('api_requests', sa.Integer(), nullable=False),
    sa.Column('retries', sa.Integer(), nullable=False),
    sa.Column('throttled', sa.Integer(), nullable=False),
    sa.Column('waited_seconds', sa.Double(), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_sync_runs'))
    )
    with op.batch_alter_table('sync_runs', schema=None) as batch_op:
        batch_op.create_index('ix_sync_runs_account_started', ['account_id', 'started_at'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('sync_runs', schema=None) as batch_op:
        batch_op.drop_index('ix_sync_runs_account_started')

    op.drop_table('sync_runs')
    with op.batch_alter_table('rejected_records', schema=None) as batch_op:
        batch_op.drop_index('ix_rejected_records_rejected_at')

    op.drop_table('rejected_records')
    with op.batch_alter_table('browser_sessions', schema=None) as batch_op:
        batch_op.drop_index('ix_browser_sessions_start_time')
        batch_op.drop_index('ix_browser_sessions_end_time')
        batch_op.drop_index('ix_browser_sessions_account_status')
        batch_op.drop_index('ix_browser_sessions_account_detail_due')

    op.drop_table('browser_sessions')
    with op.batch_alter_table('browser_session_versions', schema=None) as batch_op:
        batch_op.drop_index('ix_browser_session_versions_session')
        batch_op.drop_index('ix_browser_session_versions_observed_at')

    op.drop_table('browser_session_versions')
