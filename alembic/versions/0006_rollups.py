"""Hourly rollups of the request log (the dashboard's and ``thriftgate report``'s data).

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# A frozen copy of gateway.storage.models.LATENCY_BUCKETS_MS's length + 1 (a migration never imports the
# models: they move on, it must not).
BUCKETS = 21


def _utc() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def _money() -> sa.Numeric[float]:
    return sa.Numeric(20, 10, asdecimal=False)


def upgrade() -> None:
    op.create_table(
        "request_rollup",
        sa.Column("dimension", sa.String(16), nullable=False),
        sa.Column("hour", _utc(), nullable=False),
        sa.Column("value", sa.String(200), nullable=False),
        sa.Column("requests", sa.BigInteger(), nullable=False),
        sa.Column("errors", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("cache_hits", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("unpriced", sa.BigInteger(), nullable=False),
        sa.Column("input_tokens", sa.BigInteger(), nullable=False),
        sa.Column("output_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cache_read_tokens", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("cache_write_tokens", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("cost_usd", _money(), nullable=False),
        sa.Column("counterfactual_usd", _money(), nullable=False),
        sa.Column("saving_usd", _money(), nullable=False),
        sa.Column("latency_count", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("latency_ms_sum", sa.Float(), nullable=False, server_default="0"),
        sa.Column("ttft_count", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("ttft_ms_sum", sa.Float(), nullable=False, server_default="0"),
        *[
            sa.Column(f"lat_b{i:02d}", sa.BigInteger(), nullable=False, server_default="0")
            for i in range(BUCKETS)
        ],
        *[
            sa.Column(f"ttft_b{i:02d}", sa.BigInteger(), nullable=False, server_default="0")
            for i in range(BUCKETS)
        ],
        sa.PrimaryKeyConstraint("dimension", "hour", "value", name="pk_request_rollup"),
        sqlite_with_rowid=False,
    )
    if op.get_bind().dialect.name == "postgresql":
        # The current hour's rows are updated by every log batch: room on their page keeps those updates
        # HOT (no new index entry, no page split).
        op.execute("ALTER TABLE request_rollup SET (fillfactor = 70)")


def downgrade() -> None:
    op.drop_table("request_rollup")
