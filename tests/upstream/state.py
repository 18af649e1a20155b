"""What the simulator remembers between requests: the requests it saw and the faults queued."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from tests.upstream.config import Fault


@dataclass(slots=True, frozen=True)
class RecordedRequest:
    """One request as it arrived (headers lower-cased; ``json`` None when the body is not JSON)."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    json: Any | None

    def to_json(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "path": self.path,
            "headers": self.headers,
            "body": self.body.decode("utf-8", "replace"),
            "json": self.json,
        }


class FaultQueue:
    """Faults in injection order; each applies to its next ``times`` matching requests.

    Thread-safe: tests inject from their own thread while the server thread takes.
    """

    def __init__(self) -> None:
        self._faults: list[list[Any]] = []  # [fault, remaining]
        self._lock = threading.Lock()

    def inject(self, fault: Fault) -> None:
        """Queue ``fault`` behind the faults already queued."""
        if fault.times < 1:
            raise ValueError("Fault.times must be >= 1")
        with self._lock:
            self._faults.append([fault, fault.times])

    def take(self, path: str, stream: bool) -> Fault | None:
        """The first queued fault matching this request, counting one use of it (removed when spent)."""
        with self._lock:
            for i, entry in enumerate(self._faults):
                fault: Fault = entry[0]
                if fault.matches(path, stream):
                    entry[1] -= 1
                    if entry[1] <= 0:
                        del self._faults[i]
                    return fault
        return None

    def pending(self) -> list[Fault]:
        """The faults still queued. Does not modify the queue."""
        with self._lock:
            return [entry[0] for entry in self._faults]

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()
