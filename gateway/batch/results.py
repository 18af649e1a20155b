"""Items → result lines in each API's own format (pure).

OpenAI output file:  {"id", "custom_id", "response": {"status_code", "request_id", "body"}, "error": null}
OpenAI error file:   the same with a non-2xx response, or "response": null and "error": {"code", "message"}
Anthropic results:   {"custom_id", "result": {"type": "succeeded", "message"} | {"type": "errored", "error"}
                      | {"type": "canceled"} | {"type": "expired"}}

An item's ``response`` column holds the answer's JSON (``status_code`` set), or, for an item that ended
without one, ``{"code", "message"}`` (``status_code`` None).
"""

from __future__ import annotations

import orjson

from gateway.batch.store import CANCELLED, EXPIRED, SUCCEEDED
from gateway.storage.models import BatchItemRow


def no_answer(code: str, message: str) -> str:
    return orjson.dumps({"code": code, "message": message}).decode()


def openai_line(item: BatchItemRow) -> tuple[bool, bytes] | None:
    """(goes to the output file, the line); None for an item that has no line (cancelled: OpenAI lists
    a cancelled batch's unrun requests nowhere)."""
    if item.state == CANCELLED:
        return None
    head = b'{"id":"batch_req_%d","custom_id":' % item.id + orjson.dumps(item.custom_id)
    body = (item.response or "null").encode()
    if item.status_code is not None:
        ok = item.state == SUCCEEDED
        line = (
            head
            + b',"response":{"status_code":%d,"request_id":"tgbatch_%d","body":' % (item.status_code, item.id)
            + body
            + b'},"error":null}\n'
        )
        return ok, line
    return False, head + b',"response":null,"error":' + body + b"}\n"


def anthropic_line(item: BatchItemRow) -> bytes:
    head = b'{"custom_id":' + orjson.dumps(item.custom_id) + b',"result":'
    if item.state == SUCCEEDED:
        return head + b'{"type":"succeeded","message":' + (item.response or "null").encode() + b"}}\n"
    if item.state == CANCELLED:
        return head + b'{"type":"canceled"}}\n'
    if item.state == EXPIRED:
        return head + b'{"type":"expired"}}\n'
    if item.status_code is not None and item.response:
        error = item.response.encode()
    else:
        info = orjson.loads(item.response or b"{}")
        message = (
            info.get("message", "the request failed") if isinstance(info, dict) else "the request failed"
        )
        error = orjson.dumps({"type": "error", "error": {"type": "api_error", "message": message}})
    return head + b'{"type":"errored","error":' + error + b"}}\n"
