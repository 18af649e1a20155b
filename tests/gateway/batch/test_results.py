"""Items rendered as result lines in each API's format (Anthropic's parsed by the SDK's own type; the
OpenAI SDK has none for output lines)."""

from __future__ import annotations

import json

from anthropic.types.messages import MessageBatchIndividualResponse

from gateway.batch import results
from gateway.storage.models import BatchItemRow

MESSAGE = {
    "id": "msg_1",
    "type": "message",
    "role": "assistant",
    "model": "claude-haiku-4-5",
    "content": [{"type": "text", "text": "hi"}],
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {"input_tokens": 1, "output_tokens": 1},
}


def item(state: str, status: int | None, response: object) -> BatchItemRow:
    return BatchItemRow(id=7, custom_id="c-1", state=state, status_code=status, response=json.dumps(response))


def test_openai_lines() -> None:
    ok, line = results.openai_line(item("succeeded", 200, {"object": "chat.completion"})) or (None, b"")
    parsed = json.loads(line)
    assert ok and parsed["id"] == "batch_req_7" and parsed["custom_id"] == "c-1" and parsed["error"] is None
    assert parsed["response"]["status_code"] == 200 and parsed["response"]["body"] == {
        "object": "chat.completion"
    }
    ok, line = results.openai_line(item("failed", 400, {"error": {"message": "no"}})) or (None, b"")
    assert ok is False and json.loads(line)["response"]["body"]["error"]["message"] == "no"
    expired = item("expired", None, json.loads(results.no_answer("batch_expired", "too late")))
    ok, line = results.openai_line(expired) or (None, b"")
    parsed = json.loads(line)
    assert ok is False and parsed["error"]["code"] == "batch_expired" and parsed["response"] is None
    assert results.openai_line(item("cancelled", None, {})) is None


def test_anthropic_lines() -> None:
    def parse(row: BatchItemRow) -> MessageBatchIndividualResponse:
        return MessageBatchIndividualResponse.model_validate_json(results.anthropic_line(row))

    assert parse(item("succeeded", 200, MESSAGE)).result.type == "succeeded"
    errored = parse(
        item("failed", 400, {"type": "error", "error": {"type": "invalid_request_error", "message": "x"}})
    )
    assert errored.result.type == "errored"
    lost = parse(item("failed", None, json.loads(results.no_answer("interrupted", "gone"))))
    assert lost.result.type == "errored" and lost.result.error.error.message == "gone"  # type: ignore[union-attr]
    assert parse(item("cancelled", None, {})).result.type == "canceled"
    assert parse(item("expired", None, {})).result.type == "expired"
