"""Files and batches (tests/upstream/batches.py), OpenAI and Anthropic, on an injected clock."""

from __future__ import annotations

import json
from typing import Any

import anthropic
import openai
import pytest

from tests.servers import serve
from tests.upstream import SimConfig, Simulator
from tests.upstream.conftest import (
    an,
    oa,
    user,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _jsonl(rows: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in rows)


def test_openai_files_and_batches() -> None:
    clock = FakeClock()
    sim = Simulator(SimConfig(batches=True, batch_latency_s=60), clock=clock)
    with serve(sim.app) as url:
        client = oa(url)
        rows = [
            {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions",
             "body": {"model": "gpt-4o-mini", "messages": user("first batch question")}},
            {"custom_id": "b", "method": "POST", "url": "/v1/chat/completions",
             "body": {"model": "o3", "messages": user("second")}},
            {"custom_id": "bad", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "m"}},
        ]  # fmt: skip
        uploaded = client.files.create(file=("in.jsonl", _jsonl(rows)), purpose="batch")
        assert uploaded.purpose == "batch" and uploaded.bytes == len(_jsonl(rows))
        assert client.files.content(uploaded.id).content == _jsonl(rows)
        batch = client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        assert batch.status == "in_progress" and batch.request_counts and batch.request_counts.total == 3
        assert batch.output_file_id is None and batch.usage is None
        clock.now += 61
        done = client.batches.retrieve(batch.id)
        assert done.status == "completed" and done.request_counts
        assert (done.request_counts.completed, done.request_counts.failed) == (2, 1)
        assert done.output_file_id and done.error_file_id
        out = [json.loads(line) for line in client.files.content(done.output_file_id).text.splitlines()]
        assert [o["custom_id"] for o in out] == ["a", "b"] and out[0]["response"]["status_code"] == 200
        live = client.chat.completions.create(model="gpt-4o-mini", messages=user("first batch question"))
        assert (
            out[0]["response"]["body"]["choices"][0]["message"]["content"] == live.choices[0].message.content
        )
        assert (
            done.usage
            and done.usage.output_tokens == 16 + 32
            and done.usage.output_tokens_details.reasoning_tokens == 16
        )
        errors = [json.loads(line) for line in client.files.content(done.error_file_id).text.splitlines()]
        assert errors[0]["custom_id"] == "bad" and errors[0]["response"]["status_code"] == 400
        assert [b.id for b in client.batches.list()] == [batch.id]
        with pytest.raises(openai.ConflictError):
            client.batches.cancel(batch.id)
        second = client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        assert client.batches.cancel(second.id).status == "cancelled"
        with pytest.raises(openai.NotFoundError):
            oa(url).with_options(api_key="sk-other").batches.retrieve(batch.id)
        assert client.files.delete(uploaded.id).deleted
        with pytest.raises(openai.BadRequestError):
            client.batches.create(input_file_id="file-nope", endpoint="/v1/nope", completion_window="24h")  # type: ignore[arg-type]


def test_anthropic_message_batches() -> None:
    clock = FakeClock()
    sim = Simulator(SimConfig(batches=True, batch_latency_s=30), clock=clock)
    with serve(sim.app) as url:
        client = an(url)
        requests: Any = [
            {
                "custom_id": "one",
                "params": {"model": "claude-haiku-4-5", "max_tokens": 50, "messages": user("batch me")},
            },
            {"custom_id": "two", "params": {"model": "claude-haiku-4-5", "messages": user("no max tokens")}},
        ]
        batch = client.messages.batches.create(requests=requests)
        assert batch.processing_status == "in_progress" and batch.request_counts.processing == 2
        assert batch.results_url is None
        clock.now += 31
        done = client.messages.batches.retrieve(batch.id)
        assert done.processing_status == "ended" and done.ended_at is not None
        assert (done.request_counts.succeeded, done.request_counts.errored) == (1, 1)
        results = {r.custom_id: r.result for r in client.messages.batches.results(batch.id)}
        ok: Any = results["one"]
        assert ok.type == "succeeded" and ok.message.content[0].text.startswith(
            "Simulated answer to: batch me"
        )
        assert ok.message.usage.output_tokens == 16
        assert results["two"].type == "errored"
        assert [b.id for b in client.messages.batches.list()] == [batch.id]
        pending = client.messages.batches.create(requests=requests[:1])
        canceled = client.messages.batches.cancel(pending.id)
        assert canceled.processing_status == "ended" and canceled.request_counts.canceled == 1
        assert [r.result.type for r in client.messages.batches.results(pending.id)] == ["canceled"]
        assert client.messages.batches.delete(batch.id).type == "message_batch_deleted"
        with pytest.raises(anthropic.NotFoundError):
            client.messages.batches.retrieve(batch.id)


def test_batches_expire_with_partial_results() -> None:
    clock = FakeClock()
    config = SimConfig(batches=True, batch_latency_s=60, batch_expire_s=10, batch_expire_keep=1)
    sim = Simulator(config, clock=clock)
    with serve(sim.app) as url:
        client = oa(url)
        rows = [
            {"custom_id": c, "method": "POST", "url": "/v1/chat/completions",
             "body": {"model": "gpt-4o-mini", "messages": user(f"question {c}")}}
            for c in ("a", "b", "c")
        ]  # fmt: skip
        uploaded = client.files.create(file=("in.jsonl", _jsonl(rows)), purpose="batch")
        batch = client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        mb = an(url).messages.batches.create(
            requests=[
                {
                    "custom_id": c,
                    "params": {"model": "claude-haiku-4-5", "max_tokens": 8, "messages": user(c)},
                }
                for c in ("x", "y")
            ]
        )
        assert client.batches.retrieve(batch.id).status == "in_progress"
        clock.now += 11
        done = client.batches.retrieve(batch.id)
        assert done.status == "expired" and done.expired_at is not None and done.request_counts
        assert (done.request_counts.completed, done.request_counts.failed) == (1, 2)
        assert done.output_file_id and done.error_file_id
        out = [json.loads(line) for line in client.files.content(done.output_file_id).text.splitlines()]
        errors = [json.loads(line) for line in client.files.content(done.error_file_id).text.splitlines()]
        assert [o["custom_id"] for o in out] == ["a"]
        assert [(e["custom_id"], e["error"]["code"], e["response"]) for e in errors] == [
            ("b", "batch_expired", None),
            ("c", "batch_expired", None),
        ]
        with pytest.raises(openai.ConflictError):
            client.batches.cancel(batch.id)
        ended = an(url).messages.batches.retrieve(mb.id)
        assert ended.processing_status == "ended"
        assert (ended.request_counts.succeeded, ended.request_counts.expired) == (1, 1)
        kinds = {r.custom_id: r.result.type for r in an(url).messages.batches.results(mb.id)}
        assert kinds == {"x": "succeeded", "y": "expired"}
        assert sim._batches.sent == ["a", "b", "c", "x", "y"]
