"""Run an ASGI app on a real uvicorn server on a free loopback port, in a background thread.

Real sockets keep tests honest about streaming (nothing buffers a whole SSE stream) and about
client disconnects, which in-process transports cannot show.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn

from gateway.httpserver import HeadWithBodyProtocol
from tests.waiting import wait_until


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def serve(app: Any, *, port: int | None = None, host: str = "127.0.0.1", **config: Any) -> Iterator[str]:
    """Serve ``app`` until the block exits; yields its base URL (``http://127.0.0.1:PORT``). ``host`` is
    the address listened on (``0.0.0.0``: every interface; the URL still names loopback). The HTTP protocol
    is the one ``thriftgate serve`` runs (``gateway.httpserver``) unless ``http`` says otherwise."""
    port = port or free_port()
    config.setdefault("http", HeadWithBodyProtocol)
    server = uvicorn.Server(
        uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on", **config)
    )
    thread = threading.Thread(target=server.run, name=f"uvicorn:{port}", daemon=True)
    thread.start()
    wait_until(lambda: server.started or not thread.is_alive(), timeout_s=30, what=f"uvicorn on port {port}")
    if not server.started:
        raise RuntimeError("server failed to start")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
