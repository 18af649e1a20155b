"""The ORM tables. Alembic owns the schema (``alembic/versions``); these mappings describe it to the code
and must match the latest migration (``tests/alembic`` checks that they do).

Money columns are ``Numeric(20, 10)``: exact on PostgreSQL, and read back as ``float`` on every backend
(``asdecimal=False``) so callers never see ``Decimal``. ``NULL`` cost means the price was unknown, never 0.
Timestamps are timezone-aware UTC on both backends (SQLite stores them as naive UTC text; ``UTCDateTime``
puts the zone back on read).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    MetaData,
    Numeric,
    String,
    Table,
    Text,
    TypeDecorator,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every backend. Naive values are taken to be UTC."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def Money() -> Numeric[float]:
    """USD amount: exact ``NUMERIC(20, 10)`` in the database, ``float`` in Python."""
    return Numeric(20, 10, asdecimal=False)


# SQLite only auto-increments an ``INTEGER PRIMARY KEY``; PostgreSQL gets a BIGINT identity.
BigIntPK = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(table_name)s_%(column_0_name)s",
            "uq": "uq_%(table_name)s_%(column_0_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )


class VirtualKeyRow(Base):
    """A virtual key. The raw key is never stored: ``key_hash`` is its SHA-256 (see ``gateway.keys``)."""

    __tablename__ = "virtual_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    key_prefix: Mapped[str] = mapped_column(String(16))
    budget_usd: Mapped[float | None] = mapped_column(Money(), nullable=True)
    spend_usd: Mapped[float] = mapped_column(Money(), default=0.0, server_default="0")
    rpm: Mapped[int | None] = mapped_column(Integer, nullable=True)
    tpm: Mapped[int | None] = mapped_column(Integer, nullable=True)
    models: Mapped[list[str] | None] = mapped_column(JSON(none_as_null=True), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class RequestLogRow(Base):
    """One request, as accounted. Mirrors ``gateway.types.RequestRecord`` with ``Usage`` flattened."""

    __tablename__ = "request_log"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(String(64), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    key_id: Mapped[str | None] = mapped_column(String(32), index=True, nullable=True)
    surface: Mapped[str] = mapped_column(String(32))
    method: Mapped[str] = mapped_column(String(10))
    path: Mapped[str] = mapped_column(Text)
    requested_model: Mapped[str | None] = mapped_column(String(200), nullable=True)
    served_model: Mapped[str | None] = mapped_column(String(200), nullable=True)
    provider: Mapped[str | None] = mapped_column(String(64), nullable=True)
    status_code: Mapped[int] = mapped_column(Integer)
    stream: Mapped[bool] = mapped_column(Boolean)
    latency_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    ttft_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    input_tokens: Mapped[int] = mapped_column(Integer)
    output_tokens: Mapped[int] = mapped_column(Integer)
    cache_read_tokens: Mapped[int] = mapped_column(Integer)
    cache_write_5m_tokens: Mapped[int] = mapped_column(Integer)
    cache_write_1h_tokens: Mapped[int] = mapped_column(Integer)
    reasoning_tokens: Mapped[int] = mapped_column(Integer)
    usage_estimated: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    cost_usd: Mapped[float | None] = mapped_column(Money(), nullable=True)
    counterfactual_usd: Mapped[float | None] = mapped_column(Money(), nullable=True)
    saving_usd: Mapped[float | None] = mapped_column(Money(), nullable=True)
    saving_mechanism: Mapped[str | None] = mapped_column(String(32), nullable=True)
    priced: Mapped[bool] = mapped_column(Boolean)
    cache: Mapped[str] = mapped_column(String(32))
    route_reason: Mapped[str | None] = mapped_column(String(200), nullable=True)
    plan: Mapped[str | None] = mapped_column(String(200), nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)


class RequestContentRow(Base):
    """What one request asked and was answered (opt-in content logging, ``gateway.content``). Joined to
    its log row by ``request_id`` and ``key_id`` together: read back only with the row of the same key."""

    __tablename__ = "request_content"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(String(64), index=True)
    key_id: Mapped[str | None] = mapped_column(String(32), index=True, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    request_json: Mapped[str] = mapped_column(Text)
    answer_text: Mapped[str] = mapped_column(Text)
    truncated: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())


LATENCY_BUCKETS_MS: tuple[float, ...] = (
    5,
    10,
    25,
    50,
    75,
    100,
    150,
    250,
    400,
    600,
    800,
    1000,
    1500,
    2000,
    3000,
    5000,
    8000,
    15000,
    30000,
    60000,
)
"""Upper bounds (ms, inclusive) of the rollup's latency and TTFT histogram buckets; one more bucket above
the last bound. ``gateway.reports.rollups`` estimates percentiles from them."""

LATENCY_BUCKET_COLUMNS = tuple(f"lat_b{i:02d}" for i in range(len(LATENCY_BUCKETS_MS) + 1))
TTFT_BUCKET_COLUMNS = tuple(f"ttft_b{i:02d}" for i in range(len(LATENCY_BUCKETS_MS) + 1))
ROLLUP_DIMENSIONS: tuple[str, ...] = (
    "all",
    "key",
    "model",
    "provider",
    "mechanism",
    "cache",
    "status",
    "route",
)
"""The dimensions each request is rolled up under (``all``: one row per hour, value ``''``)."""


class RequestRollupRow(Base):
    """Hourly totals of the request log per (hour, dimension, value): one row per hour for ``all``, and one
    per hour and key, model (served, else requested), provider, saving mechanism, cache outcome, status
    class (``2xx``...) and route reason. Each request adds to one row of every dimension, so each report reads only the rows
    of the dimension it groups by (rolling up the cross product of the dimensions instead would leave
    nearly as many rows as the log itself under many keys and models). Maintained in the log writer's
    transaction (``gateway.reports.rollups``) and kept when raw rows are pruned. Missing values are ``''``.
    Money sums cover the rows whose amount is known; ``unpriced`` counts the rows without a cost;
    ``errors`` counts status >= 400 (or none); ``cache_hits`` exact and semantic hits. The ``all`` and
    ``provider`` rows carry every measure; the others only requests, unpriced, input and output tokens and
    the money sums (``gateway.reports.rollups.SPEND_MEASURES``), the rest left 0 (default)."""

    __tablename__ = "request_rollup"
    # SQLite: a WITHOUT ROWID table, clustered by the primary key, as the range scans of the reports want.
    __table_args__ = {"sqlite_with_rowid": False}  # noqa: RUF012 (SQLAlchemy reads it once)

    # Primary key (dimension, hour, value): every report reads one dimension over a range of hours.
    dimension: Mapped[str] = mapped_column(String(16), primary_key=True)
    hour: Mapped[datetime] = mapped_column(UTCDateTime(), primary_key=True)
    value: Mapped[str] = mapped_column(String(200), primary_key=True)
    requests: Mapped[int] = mapped_column(BigInteger)
    errors: Mapped[int] = mapped_column(BigInteger, server_default="0")
    cache_hits: Mapped[int] = mapped_column(BigInteger, server_default="0")
    unpriced: Mapped[int] = mapped_column(BigInteger)
    input_tokens: Mapped[int] = mapped_column(BigInteger)
    output_tokens: Mapped[int] = mapped_column(BigInteger)
    cache_read_tokens: Mapped[int] = mapped_column(BigInteger, server_default="0")
    cache_write_tokens: Mapped[int] = mapped_column(BigInteger, server_default="0")
    cost_usd: Mapped[float] = mapped_column(Money())
    counterfactual_usd: Mapped[float] = mapped_column(Money())
    saving_usd: Mapped[float] = mapped_column(Money())
    latency_count: Mapped[int] = mapped_column(BigInteger, server_default="0")
    latency_ms_sum: Mapped[float] = mapped_column(Float, server_default="0")
    ttft_count: Mapped[int] = mapped_column(BigInteger, server_default="0")
    ttft_ms_sum: Mapped[float] = mapped_column(Float, server_default="0")


for _column in (*LATENCY_BUCKET_COLUMNS, *TTFT_BUCKET_COLUMNS):
    # Core-only columns (the rollup is written and read with Core statements, never as ORM objects).
    cast(Table, RequestRollupRow.__table__).append_column(
        Column(_column, BigInteger, nullable=False, server_default="0")
    )


class FileRow(Base):
    """An uploaded or generated file. The bytes live on disk under the batch data directory (``path`` is
    relative to it); ``key_id`` owns it (None: made without a virtual key)."""

    __tablename__ = "files"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    key_id: Mapped[str | None] = mapped_column(String(32), index=True, nullable=True)
    purpose: Mapped[str] = mapped_column(String(32))
    filename: Mapped[str] = mapped_column(String(255))
    bytes: Mapped[int] = mapped_column(BigInteger)
    path: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class BatchJobRow(Base):
    """A batch job of either API (``api``: "openai" or "anthropic"), owned by ``key_id``. ``status`` follows
    OpenAI's names (validating, in_progress, finalizing, completed, failed, expired, cancelling,
    cancelled); the Anthropic surface maps them to its processing_status."""

    __tablename__ = "batch_jobs"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    api: Mapped[str] = mapped_column(String(16))
    key_id: Mapped[str | None] = mapped_column(String(32), index=True, nullable=True)
    endpoint: Mapped[str] = mapped_column(String(64))
    input_file_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    completion_window: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), index=True)
    metadata_: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSON, nullable=True)
    total: Mapped[int] = mapped_column(Integer)
    output_file_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    error_file_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    reserved_usd: Mapped[float] = mapped_column(Money(), default=0.0, server_default="0")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    in_progress_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    finalizing_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    expired_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    cancelling_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    cancelled_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class BatchUploadRow(Base):
    """One upstream batch carrying some of a job's items to a provider's batch API. ``state``: creating
    (recorded before anything is sent), submitted (``upstream_batch_id`` known: polled), done."""

    __tablename__ = "batch_uploads"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("batch_jobs.id", ondelete="CASCADE"), index=True
    )
    provider: Mapped[str] = mapped_column(String(64))
    endpoint: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16), index=True)
    upstream_file_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    upstream_batch_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    claimed_by: Mapped[str | None] = mapped_column(String(96), nullable=True)
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    cancel_sent: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class BatchItemRow(Base):
    """One request of a job (see ``gateway.batch.store`` for its states). ``duplicate_of`` points at the
    item of the same job with the same request, whose answer it shares; ``response`` is the answer's
    JSON body (or the error's) once finished."""

    __tablename__ = "batch_items"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("batch_jobs.id", ondelete="CASCADE"), index=True
    )
    line: Mapped[int] = mapped_column(Integer)
    custom_id: Mapped[str] = mapped_column(String(255))
    model: Mapped[str] = mapped_column(String(256))
    target: Mapped[str | None] = mapped_column(String(256), nullable=True)
    """The model alias that served it (set when routed), for pricing a result that arrives later."""
    body: Mapped[str] = mapped_column(Text)
    digest: Mapped[str] = mapped_column(String(64))
    duplicate_of: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    state: Mapped[str] = mapped_column(String(16), index=True)
    claimed_by: Mapped[str | None] = mapped_column(String(96), nullable=True)
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    attempt: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    upload_id: Mapped[int | None] = mapped_column(BigInteger, index=True, nullable=True)
    estimate_usd: Mapped[float] = mapped_column(Money(), default=0.0, server_default="0")
    status_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    response: Mapped[str | None] = mapped_column(Text, nullable=True)
    cost_usd: Mapped[float | None] = mapped_column(Money(), nullable=True)
    saving_usd: Mapped[float | None] = mapped_column(Money(), nullable=True)
    mechanism: Mapped[str | None] = mapped_column(String(32), nullable=True)
    input_tokens: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    """Tokens the upstream billed for this item (0 for a duplicate or a cache hit): OpenAI's counting,
    the input including its cached part, the output its reasoning."""
    cached_tokens: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    output_tokens: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    reasoning_tokens: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class CacheEntryRow(Base):
    """One cached answer (``cache.entries.CacheEntry``). ``seq`` orders inserts, so replicas load what
    others wrote since they last looked; ``embedding`` is the last user turn's float32 vector, raw."""

    __tablename__ = "cache_entries"

    seq: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(32), unique=True)
    namespace: Mapped[str] = mapped_column(String(200), index=True)
    model: Mapped[str] = mapped_column(String(256), index=True)
    key: Mapped[str] = mapped_column(String(64), index=True)
    scope: Mapped[str] = mapped_column(String(64))
    text: Mapped[str | None] = mapped_column(Text, nullable=True)
    embedding: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    response: Mapped[dict[str, Any]] = mapped_column(JSON)
    cost_usd: Mapped[float | None] = mapped_column(Money(), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    hits: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class CachePurgeRow(Base):
    """A purge of cache entries (by namespace, model and/or age), replayed by every replica on its
    in-memory index. ``older_than`` removes entries created before it."""

    __tablename__ = "cache_purges"

    seq: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    namespace: Mapped[str | None] = mapped_column(String(200), nullable=True)
    model: Mapped[str | None] = mapped_column(String(256), nullable=True)
    older_than: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
