"""The fuzz test: every endpoint of the OpenAPI schema, with requests generated from it (hypothesis) and a
list of hostile ones, against the app with the provider simulator upstream, on SQLite.

The app runs in-process (its lifespan on an event loop in a background thread, requests as raw ASGI
calls) so that any bytes a server could hand it arrive as sent: paths with ``%2e%2e``, ``//``, encoded
slashes and NULs, non-UTF-8 bytes, header values outside ASCII. Every answer is checked:

* no 5xx, no stack trace in the body, no header value that would split or break the header block;
* an error is in its API's format: OpenAI's ``{"error": {...}}`` on the OpenAI paths and the admin API,
  Anthropic's ``{"type": "error", "error": {...}}`` on ``/v1/messages...``; the shared paths (``/v1/models``,
  the passthrough, unknown routes) answer in the format of the SDK that sent the request
  (``anthropic-version`` or ``x-api-key``);

and once the gateway has stopped (its log writer flushed):

* every request under ``/v1/`` has exactly one request-log row, with the id the response carried
  (``/healthz``, ``/readyz``, ``/metrics``, ``/admin`` and paths outside ``/v1/`` are not API requests and
  are not logged);
* every string in every table is within its column's bound and holds no NUL (PostgreSQL refuses both).

The number of generated examples per endpoint is ``TG_FUZZ_EXAMPLES`` (default 25: well under a minute in
all on a loaded two-core machine). Each endpoint's examples come from a fixed seed (its name and
``TG_FUZZ_SEED``, default 0), so a run is reproducible; another seed explores further. ``TG_FUZZ_SHRINK=1``
shrinks a failure to a minimal request (hundreds more requests).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import re
import threading
import zlib
from collections.abc import Callable, Iterator
from contextlib import AsyncExitStack, contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any
from urllib.parse import quote, unquote

import pytest
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from pydantic import SecretStr
from sqlalchemy import BigInteger, Float, Integer, Numeric, String, Text, TypeDecorator, create_engine, text

from gateway.app import create_app
from gateway.keys import KeyStore
from gateway.settings import default_passthrough_routes
from gateway.storage.db import make_engine, make_sessionmaker
from gateway.storage.models import Base
from tests.gateway.api.conftest import (  # the surface fixtures, shared with tests/gateway/api/
    _sim_server,
    create_key,
    db_url,
    make_settings,
    sim,
    sim_url,
)
from tests.gateway.openapi_strategies import Operation, body_values, json_values, mutated, nested, operations
from tests.upstream import Simulator

__all__ = ["_sim_server", "db_url", "sim", "sim_url"]

pytestmark = pytest.mark.fuzz

EXAMPLES = int(os.environ.get("TG_FUZZ_EXAMPLES") or 25)
SEED = int(os.environ.get("TG_FUZZ_SEED") or 0)
# Shrinking a failure sends hundreds more requests: on request only (TG_FUZZ_SHRINK=1).
PHASES = tuple(Phase) if os.environ.get("TG_FUZZ_SHRINK") else (Phase.explicit, Phase.reuse, Phase.generate)
MASTER_KEY = "tg-master-fuzz-0123456789"
REQUEST_ID = "x-thriftgate-request-id"

# Paths whose requests are API requests, each with one request-log row.
LOGGED = re.compile(r"^/v1/")
# Paths of one API: errors in its format whoever asks (other paths: the format of the SDK that asked).
OPENAI_ONLY = (
    "/v1/chat/",
    "/v1/embeddings",
    "/v1/responses",
    "/v1/files",
    "/v1/batches",
    "/v1/completions",
    "/v1/moderations",
)
ANTHROPIC_ERROR_TYPES = {
    "invalid_request_error",
    "authentication_error",
    "permission_error",
    "not_found_error",
    "request_too_large",
    "rate_limit_error",
    "api_error",
    "timeout_error",
    "overloaded_error",
    "billing_error",
}
_TRACEBACK = re.compile(rb'Traceback \(most recent call last\)|File "[^"]+", line \d+')
_BAD_HEADER_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_TOKEN = re.compile(rb"^[!#$%&'*+\-.^_`|~0-9a-z]+$")


# ---- the app, in-process -------------------------------------------------------------------------


@dataclass(slots=True)
class Reply:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def header(self, name: bytes) -> bytes | None:
        return next((v for k, v in self.headers if k.lower() == name), None)


@dataclass(slots=True)
class Sent:
    method: str
    raw_path: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    reply: Reply

    @property
    def path(self) -> str:
        return unquote(self.raw_path.decode("ascii"))  # as uvicorn and hypercorn decode it

    def describe(self) -> str:
        return f"{self.method} {self.raw_path!r} headers={self.headers!r} body={self.body[:300]!r}"


@dataclass
class InProcessGateway:
    """The app with its lifespan running on an event loop in a thread; ``send`` makes one ASGI call."""

    app: Any
    db_url: str
    sent: list[Sent] = field(default_factory=list)
    loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.new_event_loop)

    def run(self, coro: Any, timeout: float = 60.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def send(
        self,
        method: str,
        raw_path: bytes,
        headers: list[tuple[bytes, bytes]] | None = None,
        body: bytes = b"",
        query: bytes = b"",
    ) -> Sent:
        if b"?" in raw_path and not query:
            raw_path, query = raw_path.split(b"?", 1)
        hdrs = list(headers or [])
        if body and not any(k == b"content-length" for k, _ in hdrs):
            hdrs.append((b"content-length", str(len(body)).encode()))
        reply = self.run(self._call(method, raw_path, query, hdrs, body))
        sent = Sent(method, raw_path, hdrs, body, reply)
        self.sent.append(sent)
        return sent

    async def _call(
        self, method: str, raw_path: bytes, query: bytes, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> Reply:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": unquote(raw_path.decode("ascii")),
            "raw_path": raw_path,
            "query_string": query,
            "root_path": "",
            "headers": [(k.lower(), v) for k, v in headers],
            "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 8080),
            "state": {},
        }
        done = asyncio.Event()
        delivered = False

        async def receive() -> dict[str, Any]:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            await done.wait()
            return {"type": "http.disconnect"}

        status = 0
        out_headers: list[tuple[bytes, bytes]] = []
        chunks: list[bytes] = []

        async def send(message: dict[str, Any]) -> None:
            nonlocal status, out_headers
            if message["type"] == "http.response.start":
                status = message["status"]
                out_headers = list(message.get("headers", []))
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    done.set()

        try:
            await self.app(scope, receive, send)
        except Exception:  # as a server does: a 500 if nothing was sent (Starlette re-raises after its 500)
            if not status:
                status, out_headers, chunks = 500, [], [b"Internal Server Error"]
        finally:
            done.set()
        return Reply(status, out_headers, b"".join(chunks))


@contextmanager
def running(app: Any, db_url: str) -> Iterator[InProcessGateway]:
    """Runs ``app``'s lifespan for the block; on exit the lifespan ends (the log writer flushes)."""
    gw = InProcessGateway(app, db_url)
    thread = threading.Thread(target=gw.loop.run_forever, name="fuzz-gateway", daemon=True)
    thread.start()
    stack = AsyncExitStack()
    try:
        gw.run(stack.enter_async_context(app.router.lifespan_context(app)))
        try:
            yield gw
        finally:
            gw.run(stack.aclose())
    finally:
        gw.loop.call_soon_threadsafe(gw.loop.stop)
        thread.join(timeout=10)
        gw.loop.close()


@dataclass(slots=True)
class Keys:
    unlimited: str
    limited: str
    revoked: str
    file_id: str = ""
    """A batch input file uploaded with the unlimited key."""


@contextmanager
def fuzz_gateway_on(
    sim_url: str, db_url: str, caplog: pytest.LogCaptureFixture
) -> Iterator[tuple[InProcessGateway, Keys]]:
    """A gateway on the simulator and ``db_url`` (migrated), with a master key and three virtual keys (one
    unlimited, one limited to a model with a budget and rate limits, one revoked). Afterwards: the log
    check, and no error logged by the gateway (an exception caught and turned into a 200 stream's error
    event, say)."""
    caplog.set_level(logging.WARNING, logger="gateway")
    _, unlimited = create_key(db_url, name="fuzz-unlimited")
    _, limited = create_key(db_url, name="fuzz-limited", budget_usd=0.01, rpm=1000, models=["gpt-4o-mini"])
    revoked_id, revoked = create_key(db_url, name="fuzz-revoked")

    async def revoke() -> None:
        engine = make_engine(db_url)
        try:
            await KeyStore(make_sessionmaker(engine)).revoke(revoked_id)
        finally:
            await engine.dispose()

    asyncio.run(revoke())
    settings_ = make_settings(sim_url, db_url, master_key=SecretStr(MASTER_KEY))
    app = create_app(settings_, env={}, configure_logs=False)
    with running(app, db_url) as gw:
        upload, content_type = multipart(BATCH_FILE, b"batch")
        auth = [(b"authorization", f"Bearer {unlimited}".encode()), (b"content-type", content_type)]
        uploaded = gw.send("POST", b"/v1/files", auth, upload)
        assert uploaded.reply.status == 200, uploaded.reply.body
        file_id = json.loads(uploaded.reply.body)["id"]
        yield gw, Keys(unlimited, limited, revoked, file_id)
    check_log(gw)
    errors = [r for r in caplog.records if r.name.startswith("gateway") and r.levelno >= logging.ERROR]
    assert not errors, "\n".join(f"{r.name}: {r.getMessage()} {r.exc_info!r}" for r in errors[:10])


@pytest.fixture
def fuzz_gateway(
    sim: Simulator, sim_url: str, db_url: str, caplog: pytest.LogCaptureFixture
) -> Iterator[tuple[InProcessGateway, Keys]]:
    """``fuzz_gateway_on`` SQLite."""
    with fuzz_gateway_on(sim_url, db_url, caplog) as running_gateway:
        yield running_gateway


@pytest.fixture
def hostile_gateway(
    sim: Simulator, sim_url: str, migrated_url: str, caplog: pytest.LogCaptureFixture
) -> Iterator[tuple[InProcessGateway, Keys]]:
    """``fuzz_gateway_on`` SQLite and on PostgreSQL (which, unlike SQLite, refuses what does not fit)."""
    with fuzz_gateway_on(sim_url, migrated_url, caplog) as running_gateway:
        yield running_gateway


# ---- the checks ----------------------------------------------------------------------------------


def expected_format(sent: Sent) -> str:
    """``openai`` or ``anthropic``: the error format the request must be answered in."""
    path = sent.path
    if path.startswith("/v1/messages"):
        return "anthropic"
    if path.startswith(OPENAI_ONLY) or path.startswith("/admin") or path == "/metrics":
        return "openai"
    names = {k.lower() for k, _ in sent.headers}
    return "anthropic" if b"anthropic-version" in names or b"x-api-key" in names else "openai"


def check_reply(sent: Sent) -> None:
    reply = sent.reply
    what = sent.describe()
    assert 100 <= reply.status < 500, f"{reply.status} {reply.body[:500]!r} for {what}"
    assert not _TRACEBACK.search(reply.body), f"a stack trace in {reply.body[:2000]!r} for {what}"
    for name, value in reply.headers:
        assert _TOKEN.match(name), f"header name {name!r} for {what}"
        assert not _BAD_HEADER_VALUE.search(value), f"header {name!r}: {value!r} for {what}"
    if LOGGED.match(sent.path):
        assert reply.header(REQUEST_ID.encode()), f"no request id for {what}"
    if reply.status < 400:
        check_success(sent)
        return
    try:
        body = json.loads(reply.body)
    except ValueError:
        raise AssertionError(f"error body is not JSON: {reply.body[:500]!r} for {what}") from None
    assert isinstance(body, dict), what
    error = body.get("error")
    assert isinstance(error, dict), f"no error object in {body!r} for {what}"
    assert isinstance(error.get("message"), str) and error["message"], f"{body!r} for {what}"
    assert isinstance(error.get("type"), str) and error["type"], f"{body!r} for {what}"
    relayed = "request_id" not in body  # the gateway's own errors carry it; an upstream's are relayed
    if relayed and sent.path in PASSTHROUGH_PATHS:
        assert "type" not in body, f"not OpenAI's error format (the passthrough's upstream): {body!r}"
    elif expected_format(sent) == "anthropic":
        assert body.get("type") == "error", f"not Anthropic's error format: {body!r} for {what}"
        assert error["type"] in ANTHROPIC_ERROR_TYPES, f"{body!r} for {what}"
    else:
        assert "type" not in body, f"not OpenAI's error format: {body!r} for {what}"


def check_success(sent: Sent) -> None:
    """A 2xx JSON body parses; a 2xx event stream's every ``data:`` line parses and none is an error
    event (nothing upstream fails here, so an error event is the gateway's own failure)."""
    reply, what = sent.reply, sent.describe()
    if sent.method == "HEAD" or reply.status == 204:
        return
    content_type = (reply.header(b"content-type") or b"").split(b";")[0].strip()
    if content_type == b"application/json":
        json.loads(reply.body)
    elif content_type == b"text/event-stream":
        for line in reply.body.splitlines():
            assert not line.startswith(b"event: error"), f"an error event in {reply.body[-600:]!r} for {what}"
            if line.startswith(b"data:") and line[5:].strip() != b"[DONE]":
                data = json.loads(line[5:])
                assert not (isinstance(data, dict) and (data.get("type") == "error" or "error" in data)), (
                    f"an error event {data!r} for {what}"
                )


def out_of_bounds(kind: Any, value: Any) -> str | None:
    """Why ``value`` would not fit its column on PostgreSQL (SQLite enforces no bound), or None: a string
    over its length or holding a NUL, an integer past its width, a number past its precision."""
    if value is None:
        return None
    if isinstance(kind, String | Text) and isinstance(value, str):
        bound = kind.length
        if bound is not None and len(value) > bound:
            return f"over {bound} characters ({len(value)}): {value[:100]!r}"
        if "\x00" in value:
            return f"a NUL: {value[:100]!r}"
    elif isinstance(kind, TypeDecorator):
        return out_of_bounds(kind.impl, value)
    elif (
        isinstance(kind, Numeric) and not isinstance(kind, Float) and isinstance(value, int | float | Decimal)
    ):
        digits = (kind.precision or 0) - (kind.scale or 0)
        if kind.precision is not None and abs(value) >= 10**digits:
            return f"{value!r} does not fit NUMERIC({kind.precision}, {kind.scale})"
    elif isinstance(kind, Integer) and isinstance(value, int):
        bits = 63 if isinstance(kind, BigInteger) else 31
        if not -(2**bits) <= value < 2**bits:
            return f"{value!r} does not fit a {bits + 1}-bit integer"
    elif isinstance(kind, Float) and isinstance(value, float) and not math.isfinite(value):
        return f"{value!r} is not finite"
    return None


BATCH_ENDPOINTS = ("/v1/chat/completions", "/v1/embeddings", "/v1/responses", "/v1/messages")


def _batch_items(sent: Sent) -> int:
    """How many items a batch job created by ``sent`` holds (0 for anything else)."""
    if sent.method != "POST" or sent.path not in ("/v1/batches", "/v1/messages/batches"):
        return 0
    if sent.reply.status != 200:
        return 0
    counts = json.loads(sent.reply.body).get("request_counts", {})
    return int(counts.get("total", 0)) or sum(v for v in counts.values() if isinstance(v, int))


def check_log(gw: InProcessGateway) -> None:
    """Every ``/v1/`` request has exactly one log row with its id; every string column within bounds."""
    sent = {(s.reply.header(REQUEST_ID.encode()) or b"").decode(): s for s in gw.sent if LOGGED.match(s.path)}
    ids = list(sent)
    problems: list[str] = []
    # read with a synchronous driver: nothing of the gateway's in the way
    engine = create_engine(gw.db_url.replace("+aiosqlite", "").replace("+asyncpg", "+psycopg2"))
    con = engine.connect()
    try:
        rows = list(con.execute(text("SELECT request_id, path FROM request_log")))
        logged = [r[0] for r in rows]
        # Rows of no request sent: the batch worker's, one per item it ran (of the jobs the fuzz created).
        items = sum(_batch_items(s) for s in gw.sent)
        extra = [(r[0], r[1]) for r in rows if r[0] not in sent]
        worker = [r for r in extra if r[1] in BATCH_ENDPOINTS]
        duplicates = sorted({i for i in logged if logged.count(i) > 1})
        missing = sorted(set(ids) - set(logged))
        if missing or duplicates or len(worker) != len(extra) or len(worker) > items:
            problems.append(
                f"{len(ids)} /v1/ requests answered, {len(logged)} rows logged; "
                f"not logged: {[f'{sent[i].method} {sent[i].raw_path[:80]!r} {sent[i].reply.status}' for i in missing[:12]]}, "
                f"logged twice: {duplicates[:5]}, rows of no request: {extra[:5]} "
                f"({items} batch items could explain {len(worker)})"
            )
        for table in Base.metadata.sorted_tables:
            for column in table.columns:
                for (value,) in con.execute(text(f'SELECT "{column.name}" FROM "{table.name}"')):
                    problem = out_of_bounds(column.type, value)
                    if problem is not None:
                        problems.append(f"{table.name}.{column.name}: {problem}")
    finally:
        con.close()
        engine.dispose()
    assert not problems, "\n".join(problems[:20])


# ---- generated requests ----------------------------------------------------------------------------

OPENAPI = create_app(
    make_settings("http://127.0.0.1:9", "sqlite+aiosqlite:///unused.db"), configure_logs=False
).openapi()
OPERATIONS = operations(OPENAPI)
# The allow-listed passthrough routes: their upstream (an OpenAI provider) answers errors in its own format.
PASSTHROUGH_PATHS = {r.path for r in default_passthrough_routes()}
MODELS = ["gpt-4o-mini", "claude-haiku-4-5", "cheap", "anthropic-fast", "text-embedding-3-small", "mystery"]
SEGMENTS = st.one_of(
    st.sampled_from([*MODELS, "k_0123", "..", "%2e%2e", "a%2Fb", "%00", "%ff", "x" * 300, "%0d%0a"]),
    st.text(min_size=1, max_size=20).map(lambda s: quote(s, safe="")),
)
TEXT = st.text(min_size=1, max_size=40)
# Conversations both APIs accept: user first, then alternating.
CONVERSATION = st.lists(TEXT, min_size=1, max_size=4).map(
    lambda texts: [
        {"role": "user" if i % 2 == 0 else "assistant", "content": t}
        for i, t in enumerate(texts[: len(texts) - (len(texts) + 1) % 2])
    ]
)


def _mostly(plausible: st.SearchStrategy[Any]) -> Callable[[st.SearchStrategy[Any]], st.SearchStrategy[Any]]:
    """Three times in four a plausible value (so requests reach the upstream), else the schema's."""
    return lambda from_schema: st.one_of(plausible, plausible, plausible, from_schema)


HINTS: dict[str, Callable[[st.SearchStrategy[Any]], st.SearchStrategy[Any]]] = {
    "model": _mostly(st.sampled_from(MODELS)),
    "messages": _mostly(CONVERSATION),
    "input": _mostly(st.one_of(TEXT, st.lists(TEXT, min_size=1, max_size=3))),
    "prompt": _mostly(TEXT),
    "tools": _mostly(st.none()),
    "tool_choice": _mostly(st.none()),
    "response_format": _mostly(st.none()),
    "max_tokens": lambda _: st.integers(1, 64),
    "max_completion_tokens": lambda _: st.integers(1, 64),
    "max_output_tokens": lambda _: st.integers(16, 64),
    "n": lambda _: st.just(1),
    "stream": lambda from_schema: st.one_of(st.just(True), from_schema),
    "background": lambda _: st.just(False),
}


BATCH_FILE = b"\n".join(
    json.dumps(
        {
            "custom_id": f"r{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"hi {i}"}]},
        }
    ).encode()
    for i in range(2)
)


def multipart(content: bytes, purpose: bytes, filename: bytes = b"in.jsonl") -> tuple[bytes, bytes]:
    """A ``file`` + ``purpose`` upload → (body, content-type)."""
    boundary = b"fuzzboundary7MA4YWxkTrZu0gW"
    body = (
        b"--" + boundary + b'\r\nContent-Disposition: form-data; name="purpose"\r\n\r\n' + purpose + b"\r\n"
        b"--"
        + boundary
        + b'\r\nContent-Disposition: form-data; name="file"; filename="'
        + filename
        + b'"\r\n'
        b"Content-Type: application/jsonl\r\n\r\n" + content + b"\r\n--" + boundary + b"--\r\n"
    )
    return body, b"multipart/form-data; boundary=" + boundary


def _auth(keys: Keys, op: Operation) -> st.SearchStrategy[list[tuple[bytes, bytes]]]:
    # mostly the key that gets the request through: the master key for the admin API and /metrics
    guarded = op.path.startswith("/admin") or op.path == "/metrics"
    bearer = [
        *[MASTER_KEY if guarded else keys.unlimited] * 12,
        *[keys.limited] * 3,
        None,
        "sk-client",
        "tg-not-a-key",
        keys.revoked,
        MASTER_KEY,
        "tg-" + "x" * 5000,
    ]
    return st.tuples(st.sampled_from(bearer), st.sampled_from(["authorization", "x-api-key"])).map(
        lambda t: (
            []
            if t[0] is None
            else [(t[1].encode(), (f"Bearer {t[0]}" if t[1] == "authorization" else t[0]).encode())]
        )
    )


CONTENT_TYPES = st.sampled_from(
    [b"application/json", b"application/json; charset=utf-8", b"text/plain", b"multipart/form-data", None]
)
EXTRA_HEADERS = st.lists(
    st.sampled_from(
        [
            (b"anthropic-version", b"2023-06-01"),
            (b"anthropic-beta", b"\xff\xfe"),
            (b"user-agent", "fuzz/é".encode("latin-1")),
            (b"openai-organization", b"org-other"),
            (b"cache-control", b"no-cache"),
            (b"accept", b"text/event-stream"),
        ]
    ),
    max_size=3,
    unique=True,
)


def _encode(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")


@st.composite
def requests(
    draw: st.DrawFn, op: Operation, keys: Keys
) -> tuple[str, bytes, list[tuple[bytes, bytes]], bytes]:
    path = op.path
    for name in op.path_params:
        path = path.replace("{" + name + "}", draw(SEGMENTS))
    headers = draw(_auth(keys, op)) + draw(EXTRA_HEADERS)
    content_type = draw(CONTENT_TYPES)
    if content_type is not None:
        headers.append((b"content-type", content_type))
    body = b""
    if op.multipart:
        content = draw(st.one_of(st.just(BATCH_FILE), st.binary(max_size=200), st.just(b"")))
        body, content_type = multipart(
            content, draw(st.sampled_from([b"batch", b"batch", b"fine-tune", b"\x00"]))
        )
        if draw(st.integers(0, 3)):
            headers = [(k, v) for k, v in headers if k != b"content-type"] + [(b"content-type", content_type)]
    elif op.body is not None:
        hints = {**HINTS, "input_file_id": _mostly(st.just(keys.file_id))}
        valid = body_values(op.body, OPENAPI, hints)
        kind = draw(st.sampled_from(["valid"] * 5 + ["mutated", "any"]))
        value = draw(valid if kind == "valid" else mutated(valid) if kind == "mutated" else json_values())
        body = _encode(value)
    elif draw(st.booleans()):
        body = _encode(draw(json_values()))
    return op.method, path.encode(), headers, body


@pytest.mark.parametrize("op", OPERATIONS, ids=[op.id for op in OPERATIONS])
def test_fuzz_endpoint(op: Operation, fuzz_gateway: tuple[InProcessGateway, Keys]) -> None:
    gw, keys = fuzz_gateway

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        phases=PHASES,
        suppress_health_check=list(HealthCheck),
    )
    @given(request=requests(op, keys))
    def fuzz(request: tuple[str, bytes, list[tuple[bytes, bytes]], bytes]) -> None:
        method, raw_path, headers, body = request
        check_reply(gw.send(method, raw_path, headers, body))

    seed(SEED * 2**32 + zlib.crc32(op.id.encode()))(fuzz)()


# ---- hostile requests ------------------------------------------------------------------------------

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
MESSAGES = {"model": "claude-haiku-4-5", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
JSON = [(b"content-type", b"application/json")]
ANTHROPIC = [(b"anthropic-version", b"2023-06-01"), *JSON]


def _with(base: dict[str, Any], **fields: Any) -> bytes:
    return _encode({**base, **fields})


def hostile_cases(keys: Keys) -> list[tuple[str, bytes, list[tuple[bytes, bytes]], bytes]]:
    """(method, raw path, headers, body): each sent once, with a valid key unless it carries its own."""
    bearer = [(b"authorization", f"Bearer {keys.unlimited}".encode())]
    admin = [(b"authorization", f"Bearer {MASTER_KEY}".encode()), *JSON]
    chat, messages = b"/v1/chat/completions", b"/v1/messages"
    cases: list[tuple[str, bytes, list[tuple[bytes, bytes]], bytes]] = []
    # odd paths
    for path in [
        b"/v1/x/%2e%2e/chat/completions",
        b"/v1/%2e%2e/admin/keys",
        b"/v1/chat%2Fcompletions",
        b"/v1//chat/completions",
        b"//v1/chat/completions",
        b"/%2e%2e/v1/chat/completions",
        b"/v1/chat/completions/",
        b"/v1/x%5c..%5ccompletions",
        b"/v1/%00",
        b"/v1/%ff%fe",
        b"/v1/%0d%0aSet-Cookie:%20x=1",
        b"/v1/models/%0d%0ax",
        b"/v1/models/%2e%2e%2fadmin",
        b"/v1/" + b"a" * 100_000,
        b"/v1/models/" + b"m" * 10_000,
        b"/v1",
        b"/",
        b"/admin/keys/%00",
        b"/v1/completions?%00=%ff&a=%0d%0aX-Injected:%201",
        b"/v1/chat/completions?stream=true&" + b"q" * 20_000,
        b"/v1/models?limit=99999999999999999999999&after_id=%00",
        b"/v1/moderations?#frag",
    ]:
        cases.append(("POST", path, bearer + JSON, _encode(CHAT)))
        cases.append(("GET", path, bearer, b""))
    # odd methods
    for method in ["TRACE", "PROPFIND", "CONNECT", "VERYLONGMETHODNAME", "PATCH", "HEAD", "OPTIONS"]:
        cases.append((method, chat, bearer + JSON, _encode(CHAT)))
        cases.append((method, b"/v1/models", bearer, b""))
        cases.append((method, b"/v1/files", bearer, b""))
    # bodies that are not JSON objects
    for body in [
        b"",
        b"null",
        b"[]",
        b'"a string"',
        b"{",
        b"\xff\xfe{\x00}",
        b"\xef\xbb\xbf" + _encode(CHAT),
        _encode(CHAT).decode().encode("utf-16"),
        b"[" * 100_000 + b"]" * 100_000,
        b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
        b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "\\ud800"}]}',
        b"model=gpt-4o-mini&messages=hi",
    ]:
        cases.append(("POST", chat, bearer + JSON, body))
        cases.append(("POST", messages, bearer + ANTHROPIC, body))
        cases.append(("POST", b"/v1/completions", bearer + JSON, body))
    # hostile fields
    for fields in [
        {"model": "x" * 1_000_000},
        {"model": "gpt-4o-mini\x00"},
        {"model": "gpt-4o-mini\r\nx-injected: 1"},
        {"model": "gpt-4o-mini\u2028"},
        {"model": "é" * 150},
        {"model": 12},
        {"model": ["gpt-4o-mini"]},
        {"messages": [{"role": "user", "content": "\x00\r\n" * 1_000}]},
        {"messages": [{"role": "user", "content": "x" * 2_000_000}]},
        {"messages": [{"role": "\x00", "content": "hi"}]},
        {"messages": [{"role": "user", "content": [{"type": "\x00", "text": "hi"}]}]},
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi", "\x00": 1}]}]},
        {"messages": [[[[[]]]]]},
        {"messages": [{"role": "user", "content": "hi"}] * 10_000},
        {"max_tokens": 2**63 - 1},
        {"max_tokens": 2**64},
        {"max_tokens": -(2**63)},
        {"max_tokens": 1e308},
        {"max_tokens": 0},
        {"temperature": 1e308},
        {"stream": "yes"},
        {"stream": True, "stream_options": {"include_usage": "\x00"}},
        {"stream_options": [1]},
        {"tools": [{"type": "function", "function": {"name": "\x00" * 300}}]},
        {"metadata": {"\x00": "\x00"}},
        {"stop": ["\x00"] * 1_000},
        {"system": {"x": 1}},
        {"model": "cheap", "x": nested(300, 1)},  # parsed (1,024 levels), too deep to write back (254)
        {"model": "anthropic-fast", "x": nested(300, 1)},
        {"stream": True, "x": nested(300, 1)},
        {"background": True},
    ]:
        cases.append(("POST", chat, bearer + JSON, _with(CHAT, **fields)))
        cases.append(("POST", messages, bearer + ANTHROPIC, _with(MESSAGES, **fields)))
        cases.append(("POST", b"/v1/messages/count_tokens", bearer + ANTHROPIC, _with(MESSAGES, **fields)))
        cases.append(
            (
                "POST",
                b"/v1/responses",
                bearer + JSON,
                _with({"model": "gpt-4o-mini", "input": "hi"}, **fields),
            )
        )
        cases.append(
            (
                "POST",
                b"/v1/completions",
                bearer + JSON,
                _with({"model": "gpt-4o-mini", "prompt": "hi"}, **fields),
            )
        )
        cases.append(
            (
                "POST",
                b"/v1/embeddings",
                bearer + JSON,
                _with({"model": "text-embedding-3-small", "input": "hi"}, **fields),
            )
        )
    cases.append(("POST", chat, bearer + JSON, b"{" + b" " * (11 * 1024 * 1024) + b"}"))  # over the limit
    # content types and lengths
    for headers in [
        [(b"content-type", b"text/plain")],
        [(b"content-type", b"multipart/form-data; boundary=x")],
        [(b"content-type", b"application/x-www-form-urlencoded")],
        [(b"content-type", b"application/json; charset=latin-1")],
        [(b"content-type", b"\xff\xfe")],
        [(b"content-length", b"abc")],
        [(b"content-length", b"-1")],
        [(b"content-length", b"99999999999999999999999")],
        [(b"content-length", b"3")],
    ]:
        cases.append(("POST", chat, bearer + headers, _encode(CHAT)))
        cases.append(
            ("POST", messages, [*bearer, (b"anthropic-version", b"2023-06-01"), *headers], _encode(MESSAGES))
        )
    # credentials and headers
    for headers in [
        [(b"authorization", b"Bearer \xff\xfe")],
        [(b"authorization", b"Bearer tg-" + b"x" * 100_000)],
        [(b"authorization", b"Bearer tg-\x00")],
        [(b"authorization", b"Basic dXNlcjpwYXNz")],
        [(b"authorization", b"Bearer")],
        [(b"authorization", b"")],
        [(b"x-api-key", b"tg-\xe9")],
        [(b"x-api-key", keys.limited.encode())],
        [(b"x-api-key", keys.revoked.encode())],
        [*bearer, (b"authorization", b"Bearer tg-other")],
        [*bearer, (b"user-agent", b"\xff" * 10_000)],
        [*bearer, (b"anthropic-version", b"\x80\x81")],
        [*bearer, (b"anthropic-beta", b"\xe9t\xe9")],
        [*bearer, (b"openai-organization", b"org-\xff")],
        [*bearer, (b"idempotency-key", b"k" * 50_000)],
        [*bearer, (b"x-thriftgate-request-id", b"injected")],
    ]:
        cases.append(("POST", chat, headers + JSON, _encode(CHAT)))
        cases.append(("POST", messages, headers + ANTHROPIC, _encode(MESSAGES)))
        cases.append(("GET", b"/v1/models", headers, b""))
        cases.append(("GET", b"/metrics", headers, b""))
    # the admin API
    for body in [
        {"name": "\x00"},
        {"name": "a\r\nb"},
        {"name": "x" * 10_000},
        {"name": "ok", "budget_usd": 1e308},
        {"name": "ok", "budget_usd": 1e12},
        {"name": "ok", "budget_usd": -1},
        {"name": "ok", "rpm": 2**63},
        {"name": "ok", "models": ["\x00" * 300]},
        {"name": "ok", "models": ["m"] * 100_000},
        {"name": "ok", "models": "gpt-4o-mini"},
        {"name": "ok", "unknown": 1},
    ]:
        cases.append(("POST", b"/admin/keys", admin, _encode(body)))
    cases.append(("POST", b"/admin/keys", admin, b"\xff"))
    cases.append(("GET", b"/admin/keys/" + b"k" * 10_000, admin, b""))
    cases.append(("DELETE", b"/admin/keys/%00", admin, b""))
    return cases


def _line(i: int, body: Any) -> bytes:
    return _encode({"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions", "body": body})


HOSTILE_FILES: list[tuple[bytes, bytes]] = [  # (file name, content) uploaded, then a batch created from each
    (b"\x00.jsonl", BATCH_FILE),
    (b"f" * 10_000 + b".jsonl", BATCH_FILE),
    ("é\u2028.jsonl".encode(), BATCH_FILE),
    (b"deep.jsonl", _line(0, {**CHAT, "x": nested(300, 1)})),
    (b"cheap.jsonl", _line(0, {**CHAT, "model": "cheap", "x": nested(300, 1)})),
    (b"bad.jsonl", b"{\n\xff\xfe\n" + _line(1, CHAT)),
    (b"nul.jsonl", _line(0, {**CHAT, "model": "gpt-4o-mini\x00"})),
    (b"long.jsonl", _line(0, {**CHAT, "model": "m" * 300})),
    (
        b"ids.jsonl",
        _encode({"custom_id": "\x00" * 300, "method": "POST", "url": "/v1/chat/completions", "body": CHAT}),
    ),
    (b"empty.jsonl", b""),
]


def hostile_uploads(gw: InProcessGateway, keys: Keys) -> list[Sent]:
    """Uploads each of ``HOSTILE_FILES`` and creates a batch (and a message batch) from what it can."""
    auth = [(b"authorization", f"Bearer {keys.unlimited}".encode())]
    out: list[Sent] = []
    for name, content in HOSTILE_FILES:
        body, content_type = multipart(content, b"batch", name)
        upload = gw.send("POST", b"/v1/files", [*auth, (b"content-type", content_type)], body)
        out.append(upload)
        if upload.reply.status == 200:
            file_id = json.loads(upload.reply.body)["id"]
            create = {
                "input_file_id": file_id,
                "endpoint": "/v1/chat/completions",
                "completion_window": "24h",
            }
            out.append(gw.send("POST", b"/v1/batches", [*auth, *JSON], _encode(create)))
    for params in [{**MESSAGES, "x": nested(300, 1)}, {**MESSAGES, "model": "x\x00"}, {"model": 1}]:
        batch = {"requests": [{"custom_id": "a", "params": params}]}
        out.append(gw.send("POST", b"/v1/messages/batches", [*auth, *ANTHROPIC], _encode(batch)))
    broken = [
        b'--x\r\nContent-Disposition: form-data; name="file"\r\n\r\nabc',  # never ends
        b"not multipart at all",
    ]
    for body in broken:
        headers = [*auth, (b"content-type", b"multipart/form-data; boundary=x")]
        out.append(gw.send("POST", b"/v1/files", headers, body))
    out.append(gw.send("POST", b"/v1/files", [*auth, (b"content-type", b"multipart/form-data")], b"--"))
    return out


def test_hostile_requests(hostile_gateway: tuple[InProcessGateway, Keys]) -> None:
    gw, keys = hostile_gateway
    failures = []
    sent = [
        gw.send(method, raw_path, headers, body) for method, raw_path, headers, body in hostile_cases(keys)
    ]
    for one in sent + hostile_uploads(gw, keys):
        try:
            check_reply(one)
        except AssertionError as exc:
            failures.append(str(exc).splitlines()[0][:600])
    assert not failures, f"{len(failures)} hostile requests answered wrongly:\n" + "\n".join(failures)
