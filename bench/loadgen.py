"""Load generators for the overhead benchmark.

- ``LeanClient``: one blocking keep-alive HTTP/1.1 connection on a raw socket, the request bytes built
  once. It measures sequential (concurrency 1) latency with as little client work as Python allows, and
  for SSE streams the time to the first content event (TTFT: the moment the bytes carrying the first
  event with a non-empty ``choices[0].delta.content`` were received) and the total time. Every response
  is checked (status 200, a complete body; a stream must end with ``data: [DONE]`` and carry content).
- ``run_wrk``: wrk (C, epoll) with a Lua POST script for fixed-duration throughput at N connections; the
  script's ``done`` hook prints one JSON line with the counts and latency percentiles.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson


class LoadError(RuntimeError):
    """A response was wrong (status, framing, missing content) or the load generator failed."""


@dataclass(slots=True)
class Timing:
    """One request: seconds from the first byte sent to the first content event (streams) and to the end."""

    ttft_s: float | None
    total_s: float


def build_request(url: str, body: bytes, headers: Mapping[str, str]) -> bytes:
    """The raw HTTP/1.1 POST for ``url`` (keep-alive)."""
    parts = urlsplit(url)
    lines = [
        f"POST {parts.path or '/'} HTTP/1.1",
        f"Host: {parts.netloc}",
        "Connection: keep-alive",
        f"Content-Length: {len(body)}",
        *(f"{k}: {v}" for k, v in headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class LeanClient:
    """Sequential requests on one persistent connection (reconnects if the server closes it)."""

    def __init__(self, url: str, body: bytes, headers: Mapping[str, str], timeout_s: float = 30.0) -> None:
        parts = urlsplit(url)
        self._addr = (parts.hostname or "127.0.0.1", parts.port or 80)
        self._request = build_request(url, body, headers)
        self._timeout = timeout_s
        self._sock: socket.socket | None = None
        self._buf = b""

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._buf = b""

    def _connect(self) -> socket.socket:
        if self._sock is None:
            sock = socket.create_connection(self._addr, timeout=self._timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._sock = sock
            self._buf = b""
        return self._sock

    def _recv(self) -> bytes:
        assert self._sock is not None
        data = self._sock.recv(65536)
        if not data:
            raise LoadError("connection closed by the server mid-response")
        return data

    def request(self, stream: bool) -> Timing:
        """Sends the request once and reads the whole answer; raises ``LoadError`` on a wrong answer."""
        sock = self._connect()
        t0 = time.perf_counter()
        try:
            sock.sendall(self._request)
            head = self._read_head()
        except (LoadError, OSError):
            self.close()  # a stale keep-alive connection: retry once on a fresh one
            sock = self._connect()
            t0 = time.perf_counter()
            sock.sendall(self._request)
            head = self._read_head()
        status, headers = head
        if status != 200:
            body = self._read_body(headers, stream=False)[0]
            raise LoadError(f"status {status}: {body[:300]!r}")
        body, ttft_at = self._read_body(headers, stream=stream)
        t_end = time.perf_counter()
        if headers.get("connection", "").lower() == "close":
            self.close()
        if stream:
            if ttft_at is None:
                raise LoadError(f"stream carried no content event: {body[:300]!r}")
            if b"data: [DONE]" not in body and b"event: message_stop" not in body:
                raise LoadError(f"stream did not end with [DONE] or message_stop: {body[-300:]!r}")
            return Timing(ttft_at - t0, t_end - t0)
        if b'"choices"' not in body and b'"type":"message"' not in body.replace(b'": "', b'":"'):
            raise LoadError(f"neither choices nor an Anthropic message in the answer: {body[:300]!r}")
        return Timing(None, t_end - t0)

    def _read_head(self) -> tuple[int, dict[str, str]]:
        while b"\r\n\r\n" not in self._buf:
            self._buf += self._recv()
        raw, self._buf = self._buf.split(b"\r\n\r\n", 1)
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return status, headers

    def _read_body(self, headers: dict[str, str], stream: bool) -> tuple[bytes, float | None]:
        """The body (de-chunked) and, for a stream, when the first content event arrived."""
        if "content-length" in headers:
            n = int(headers["content-length"])
            while len(self._buf) < n:
                self._buf += self._recv()
            body, self._buf = self._buf[:n], self._buf[n:]
            return body, None
        if headers.get("transfer-encoding", "").lower() != "chunked":
            raise LoadError(f"neither content-length nor chunked: {headers}")
        out = bytearray()
        events = _ContentWatch() if stream else None
        ttft_at: float | None = None
        received_at = time.perf_counter()
        while True:
            while b"\r\n" not in self._buf:
                self._buf += self._recv()
                received_at = time.perf_counter()
            size_line, rest = self._buf.split(b"\r\n", 1)
            size = int(size_line.split(b";")[0], 16)
            while len(rest) < size + 2:
                rest += self._recv()
                received_at = time.perf_counter()
            chunk, self._buf = rest[:size], rest[size + 2 :]
            if size == 0:
                return bytes(out), ttft_at
            out += chunk
            if events is not None and ttft_at is None and events.feed(chunk):
                ttft_at = received_at


class _ContentWatch:
    """Splits SSE bytes into events; ``feed`` says whether an event with non-empty delta content arrived
    (an OpenAI chunk's ``choices[0].delta.content`` or an Anthropic ``content_block_delta``'s text)."""

    def __init__(self) -> None:
        self._pending = b""

    def feed(self, data: bytes) -> bool:
        self._pending += data.replace(b"\r\n", b"\n")
        while b"\n\n" in self._pending:
            event, self._pending = self._pending.split(b"\n\n", 1)
            for line in event.split(b"\n"):
                if not line.startswith(b"data:"):
                    continue
                payload = line[5:].strip()
                if payload == b"[DONE]" or not payload:
                    continue
                try:
                    obj = orjson.loads(payload)
                except orjson.JSONDecodeError:
                    continue
                if not isinstance(obj, dict):
                    continue
                if obj.get("type") == "content_block_delta":  # Anthropic messages
                    delta = obj.get("delta") or {}
                    if isinstance(delta, dict) and delta.get("text"):
                        return True
                    continue
                choices = obj.get("choices")
                if choices and isinstance(choices[0], dict):
                    delta = choices[0].get("delta") or {}
                    if isinstance(delta, dict) and delta.get("content"):
                        return True
        return False


def measure_sequential(
    url: str, body: bytes, headers: Mapping[str, str], n: int, stream: bool, warmup: int = 20
) -> list[Timing]:
    """``n`` sequential requests on one connection after ``warmup`` unmeasured ones."""
    client = LeanClient(url, body, headers)
    try:
        for _ in range(warmup):
            client.request(stream)
        return [client.request(stream) for _ in range(n)]
    finally:
        client.close()


# ---- wrk ------------------------------------------------------------------------------------------

_LUA = """\
wrk.method = "POST"
wrk.body = {body}
{headers}
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {{"requests":%d,"duration_us":%d,"bytes":%d,"errors_connect":%d,"errors_read":%d,' ..
    '"errors_write":%d,"errors_status":%d,"errors_timeout":%d,"latency_mean_us":%.1f,' ..
    '"latency_p50_us":%d,"latency_p90_us":%d,"latency_p99_us":%d,"latency_max_us":%d}}\\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency.mean, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max))
end
"""


def _lua_string(value: str) -> str:
    return json.dumps(value)  # a JSON string literal is a valid Lua string literal for ASCII text


def wrk_script(body: bytes, headers: Mapping[str, str], delay_ms: float | None = None) -> str:
    """The Lua script: the POST, and with ``delay_ms`` a pause before each request on a connection, drawn
    uniformly from [0, 2 * delay_ms] so the connections do not fire in lockstep (each then offers about
    1000 / (delay_ms + latency) requests/s instead of saturating)."""
    lines = "\n".join(f"wrk.headers[{_lua_string(k)}] = {_lua_string(v)}" for k, v in headers.items())
    if delay_ms is not None:
        lines += f"\ndelay = function() return math.random(0, {2 * int(delay_ms)}) end"
    return _LUA.format(body=_lua_string(body.decode()), headers=lines)


def ensure_wrk() -> str:
    """The wrk binary; installs Debian's package (apt-get) when it is missing."""
    found = shutil.which("wrk")
    if found:
        return found
    for argv in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "wrk"]):
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    found = shutil.which("wrk")
    if not found:
        raise LoadError("wrk is not installed and apt-get could not install it")
    return found


def run_wrk(
    wrk: str,
    url: str,
    body: bytes,
    headers: Mapping[str, str],
    connections: int,
    duration_s: float,
    threads: int = 1,
    delay_ms: float | None = None,
) -> dict[str, Any]:
    """One fixed-duration wrk run; returns its counts, requests/s and latency percentiles (ms).
    Raises ``LoadError`` when wrk fails or any request errored (non-2xx, read/connect errors, timeouts)."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(wrk_script(body, headers, delay_ms))
        script = Path(f.name)
    try:
        proc = subprocess.run(
            [
                wrk,
                f"-t{threads}",
                f"-c{connections}",
                f"-d{max(1, round(duration_s))}s",
                "--timeout",
                "30s",
                "-s",
                str(script),
                url,
            ],
            capture_output=True,
            text=True,
            timeout=duration_s + 60,
        )
    finally:
        script.unlink(missing_ok=True)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("WRKJSON ")), None)
    if proc.returncode != 0 or line is None:
        raise LoadError(f"wrk failed ({proc.returncode}): {proc.stdout[-500:]} {proc.stderr[-500:]}")
    raw = json.loads(line[len("WRKJSON ") :])
    errors = sum(raw[k] for k in raw if k.startswith("errors_"))
    seconds = raw["duration_us"] / 1e6
    return {
        "connections": connections,
        "delay_ms": delay_ms,
        "duration_s": round(seconds, 3),
        "requests": raw["requests"],
        "errors": errors,
        "errors_detail": {k: raw[k] for k in raw if k.startswith("errors_")},
        "rps": raw["requests"] / seconds if seconds else 0.0,
        "latency_ms": {
            "mean": raw["latency_mean_us"] / 1000,
            "p50": raw["latency_p50_us"] / 1000,
            "p90": raw["latency_p90_us"] / 1000,
            "p99": raw["latency_p99_us"] / 1000,
            "max": raw["latency_max_us"] / 1000,
        },
    }
