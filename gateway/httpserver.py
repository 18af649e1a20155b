"""The HTTP/1.1 protocol ``thriftgate serve`` gives uvicorn: uvicorn's own (httptools), with each response's
head and the body bytes written right after it sent in one piece.

uvicorn writes a response's head and its body apart, each straight to the socket: two system calls per
response and, at the client, often two wake-ups. On the gateway's fast path both follow each other in
the same turn of the event loop (a JSON answer's body; a stream's first event when it is already there), so
``HeldHeadTransport`` keeps the head until the next write, at most until the end of that turn, and sends
them together. Nothing else changes: every other write goes out at once, and a held head is written
before anything that closes, ends or hands over the connection (every writing method is wrapped, so no
write can overtake a held head, whatever a future uvicorn calls).
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

_STATUS_LINE = b"HTTP/1.1 "
_HEAD_END = b"\r\n\r\n"


class HeldHeadTransport:
    """Wraps a transport: a write that is a response head (``HTTP/1.1 ...`` up to a blank line) is held
    until the next write, which carries it, or until the end of the current loop turn (``call_soon``).
    Holding any bytes that look like a head is safe: they are only joined to what follows, in order.
    Everything else is the wrapped transport's."""

    __slots__ = ("_held", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        held = self._held
        if held is not None:
            self._held = None
            self._transport.write(held + bytes(data))
        elif isinstance(data, bytes) and data.startswith(_STATUS_LINE) and data.endswith(_HEAD_END):
            self._held = data
            self._loop.call_soon(self.flush)
        else:
            self._transport.write(data)

    def flush(self) -> None:
        """Writes the held head, if any (dropped if the connection is closing: nobody reads it)."""
        held, self._held = self._held, None
        if held is not None and not self._transport.is_closing():
            self._transport.write(held)

    def writelines(self, data: Any) -> None:
        """Joined into one ``write`` (a held head goes first, in the same send)."""
        self.write(b"".join(bytes(d) for d in data))

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.flush()
        self._transport.set_protocol(protocol)

    def abort(self) -> None:
        self._held = None
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class HeadWithBodyProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol over a ``HeldHeadTransport`` (``uvicorn.run(..., http=this)``)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(HeldHeadTransport(transport, self.loop))  # type: ignore[arg-type]
