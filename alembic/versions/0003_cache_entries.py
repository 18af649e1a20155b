"""Cache entries (exact and semantic answers) and the purges every replica replays.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Spelled out here rather than imported from gateway.storage.models, so this migration never changes.
_SEQ = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def UTCDateTime() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "cache_entries",
        sa.Column("seq", _SEQ, primary_key=True, autoincrement=True),
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("namespace", sa.String(200), nullable=False),
        sa.Column("model", sa.String(256), nullable=False),
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("scope", sa.String(64), nullable=False),
        sa.Column("text", sa.Text(), nullable=True),
        sa.Column("embedding", sa.LargeBinary(), nullable=True),
        sa.Column("response", sa.JSON(), nullable=False),
        sa.Column("cost_usd", sa.Numeric(20, 10, asdecimal=False), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
        sa.Column("hits", sa.Integer(), nullable=False, server_default="0"),
        sa.PrimaryKeyConstraint("seq", name="pk_cache_entries"),
        sa.UniqueConstraint("id", name="uq_cache_entries_id"),
    )
    for col in ("namespace", "model", "key", "created_at", "expires_at"):
        op.create_index(f"ix_cache_entries_{col}", "cache_entries", [col])
    op.create_table(
        "cache_purges",
        sa.Column("seq", _SEQ, primary_key=True, autoincrement=True),
        sa.Column("namespace", sa.String(200), nullable=True),
        sa.Column("model", sa.String(256), nullable=True),
        sa.Column("older_than", UTCDateTime(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("seq", name="pk_cache_purges"),
    )


def downgrade() -> None:
    op.drop_table("cache_purges")
    for col in ("expires_at", "created_at", "key", "model", "namespace"):
        op.drop_index(f"ix_cache_entries_{col}", "cache_entries")
    op.drop_table("cache_entries")
