"""Opt-in content logging: each request's body and the text of its answer (gateway.content).

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "request_content",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True
        ),
        sa.Column("request_id", sa.String(64), nullable=False),
        sa.Column("key_id", sa.String(32), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("request_json", sa.Text(), nullable=False),
        sa.Column("answer_text", sa.Text(), nullable=False),
        sa.Column("truncated", sa.Boolean(), nullable=False, server_default=sa.false()),
    )
    op.create_index("ix_request_content_request_id", "request_content", ["request_id"])
    op.create_index("ix_request_content_key_id", "request_content", ["key_id"])
    op.create_index("ix_request_content_created_at", "request_content", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_request_content_created_at", table_name="request_content")
    op.drop_index("ix_request_content_key_id", table_name="request_content")
    op.drop_index("ix_request_content_request_id", table_name="request_content")
    op.drop_table("request_content")
