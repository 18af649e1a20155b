"""Prometheus metrics, one ``Metrics`` per app (its own ``CollectorRegistry``: no module-level state, so two
apps in one process, as in tests, never share counters).

Label values are bounded by the configuration, never by what clients send: a model label is one of the
names ``Metrics`` was built with (``model_labels``: the catalogue's aliases and their upstream ids) or
``other``, a provider label a configured provider's name or ``other``. Every other label is set by the
gateway's own code. So a client cycling through model names (``openai/<anything>`` routes) cannot grow the
registry, and the exposition stays the size the configuration makes it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from gateway.types import Usage

if TYPE_CHECKING:
    from gateway.config import Catalogue

OTHER = "other"
"""The label of every model (or provider) that is not configured."""

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


def model_labels(catalogue: Catalogue) -> frozenset[str]:
    """The model names the metrics may label: every catalogue alias and the upstream model id it routes to
    (the pipeline may report either). Reads the catalogue only."""
    names: set[str] = set()
    for route in catalogue.routes():
        names.add(route.alias)
        names.add(route.upstream_model)
    return frozenset(names)


class LogWriterState(Protocol):
    """What ``/metrics`` reads from the request-log writer (``gateway.logwriter.LogWriter``)."""

    @property
    def pending(self) -> int: ...
    @property
    def quarantined(self) -> int: ...

    written: int
    spilled: int
    replayed: int
    write_failures: int

    def health(self) -> Any: ...


class _LogWriterCollector(Collector):
    """Reads the writer's counters at scrape time (nothing is copied on the request path)."""

    def __init__(self) -> None:
        self.writer: LogWriterState | None = None

    def describe(self) -> Iterable[Metric]:
        return list(self._families(None))

    def collect(self) -> Iterable[Metric]:
        return list(self._families(self.writer))

    @staticmethod
    def _families(w: LogWriterState | None) -> Iterator[Metric]:
        def gauge(name: str, doc: str, value: float | None) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, value=value)

        def counter(name: str, doc: str, value: float | None) -> CounterMetricFamily:
            return CounterMetricFamily(name, doc, value=value)

        yield gauge(
            "thriftgate_log_queue_depth",
            "Request-log rows queued in memory, not yet written",
            None if w is None else w.pending,
        )
        yield gauge(
            "thriftgate_log_writer_healthy",
            "1 while the request-log writer keeps up, 0 while it is persistently failing or behind",
            None if w is None else float(w.health().healthy),
        )
        yield counter(
            "thriftgate_log_rows_written", "Request-log rows written", None if w is None else w.written
        )
        yield counter(
            "thriftgate_log_rows_spilled",
            "Request-log rows spilled to disk (over max_pending)",
            None if w is None else w.spilled,
        )
        yield counter(
            "thriftgate_log_rows_replayed",
            "Spilled request-log rows written back",
            None if w is None else w.replayed,
        )
        yield counter(
            "thriftgate_log_rows_quarantined",
            "Request-log rows the database refused, kept in the quarantine folder",
            None if w is None else w.quarantined,
        )
        yield counter(
            "thriftgate_log_write_failures",
            "Request-log writes that failed because of the database (retried)",
            None if w is None else w.write_failures,
        )


class Metrics:
    """The gateway's metrics. Every ``observe_*`` / ``on_*`` method mutates the registry's counters only.

    ``models`` and ``providers`` are the only model and provider label values (anything else is counted
    as ``other``; a missing model as ``""``); with neither given, every model and provider is ``other``."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, *, models: Iterable[str] = (), providers: Iterable[str] = ()) -> None:
        self._models = frozenset(models) | {""}
        self._providers = frozenset(providers)
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "thriftgate_requests",
            "Requests by surface, model and status",
            ["surface", "model", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "thriftgate_request_latency_seconds",
            "Request latency (to the last byte) by surface",
            ["surface"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "thriftgate_ttft_seconds",
            "Time to the first forwarded byte of a stream, by surface",
            ["surface"],
            buckets=_TTFT_BUCKETS,
            registry=r,
        )
        self.tokens = Counter("thriftgate_tokens", "Tokens by model and kind", ["model", "kind"], registry=r)
        self.cost = Counter(
            "thriftgate_cost_usd", "Cost in USD of priced requests, by model", ["model"], registry=r
        )
        self.upstream_errors = Counter(
            "thriftgate_upstream_errors",
            "Upstream failures by provider and kind",
            ["provider", "kind"],
            registry=r,
        )
        # Label children by label values: ``labels()`` costs more than the increment it leads to.
        self._per_request: dict[tuple[str, str, int], tuple[Any, Any, Any]] = {}
        self._per_token_kind: dict[tuple[str, str], Any] = {}
        self.retries = Counter(
            "thriftgate_upstream_retries",
            "Upstream retries by provider and reason",
            ["provider", "reason"],
            registry=r,
        )
        self._log_writer = _LogWriterCollector()
        r.register(self._log_writer)

    def track_log_writer(self, writer: LogWriterState) -> None:
        """Exposes ``writer``'s queue depth and counters (read at each scrape). Replaces any earlier one."""
        self._log_writer.writer = writer

    def observe_request(
        self,
        *,
        surface: str,
        model: str | None,
        status: int,
        latency_s: float,
        ttft_s: float | None,
        usage: Usage,
        cost_usd: float | None,
    ) -> None:
        """Records one finished request. ``model`` is labelled as itself only when configured (see the
        class docstring)."""
        m = model or ""
        if m not in self._models:
            m = OTHER
        key = (surface, m, status)
        children = self._per_request.get(key)
        if children is None:
            children = self._per_request[key] = (
                self.requests.labels(surface, m, str(status)),
                self.latency.labels(surface),
                self.ttft.labels(surface),
            )
        count, latency, ttft = children
        count.inc()
        latency.observe(latency_s)
        if ttft_s is not None:
            ttft.observe(ttft_s)
        for kind, n in (
            ("input", usage.input_tokens),
            ("output", usage.output_tokens),
            ("cache_read", usage.cache_read_tokens),
            ("cache_write_5m", usage.cache_write_5m_tokens),
            ("cache_write_1h", usage.cache_write_1h_tokens),
            ("reasoning", usage.reasoning_tokens),
        ):
            if n:
                child = self._per_token_kind.get((m, kind))
                if child is None:
                    child = self._per_token_kind[(m, kind)] = self.tokens.labels(m, kind)
                child.inc(n)
        if cost_usd:
            self.cost.labels(m).inc(cost_usd)

    def on_upstream_error(self, provider: str, kind: str) -> None:
        """Counts an upstream failure (``kind``: unreachable, timeout, http_<status>, stream_broken, error_event)."""
        self.upstream_errors.labels(self._provider(provider), kind).inc()

    def on_retry(self, provider: str, reason: object) -> None:
        """The providers' retry hook: ``reason`` is a status code or an exception."""
        label = str(reason) if isinstance(reason, int) else type(reason).__name__
        self.retries.labels(self._provider(provider), label).inc()

    def _provider(self, name: str) -> str:
        return name if name in self._providers else OTHER

    def render(self) -> bytes:
        """The Prometheus text exposition of this registry. Does not modify it."""
        return generate_latest(self.registry)
