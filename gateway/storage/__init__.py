"""Storage: SQLAlchemy 2 (async) tables, engines and the queries the gateway runs. Alembic owns the schema."""

from gateway.storage.db import (
    DEFAULT_DATABASE_URL,
    current_revision,
    downgrade,
    head_revision,
    make_engine,
    make_sessionmaker,
    ping,
    upgrade,
)
from gateway.storage.models import Base, RequestLogRow, VirtualKeyRow

__all__ = [
    "DEFAULT_DATABASE_URL",
    "Base",
    "RequestLogRow",
    "VirtualKeyRow",
    "current_revision",
    "downgrade",
    "head_revision",
    "make_engine",
    "make_sessionmaker",
    "ping",
    "upgrade",
]
