"""browser_sessions.content_hash: the digest of the listed object a session's state reflects

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23 19:40:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0004'
down_revision: str | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Existing rows start without a digest: their next listing parses them once and sets it.
    op.add_column('browser_sessions', sa.Column('content_hash', sa.String(length=32), nullable=True))


def downgrade() -> None:
    # A plain ALTER TABLE (SQLite has one since 3.35): a batch rebuild of the table would have to
    # rename it under the reporting views of 0003, which SQLite refuses.
    op.drop_column('browser_sessions', 'content_hash')
