"""The batch surfaces through the official SDKs: OpenAI files + batches, Anthropic message batches, with the
simulator's batch APIs behind the gateway. Ownership, cancel, expiry, partial failures, dedup, accounting."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

from gateway.settings import BatchSettings
from tests.gateway.api.conftest import create_key
from tests.upstream import Simulator
from tests.waiting import wait_until


def batch_settings(tmp_path: Path, **overrides: Any) -> BatchSettings:
    values: dict[str, Any] = {
        "data_dir": str(tmp_path / "files"),
        "poll_interval_s": 0.05,
        "tick_s": 0.02,
        "lease_s": 2.0,
        **overrides,
    }
    return BatchSettings(**values)


def chat_line(custom_id: str, text: str, model: str = "gpt-4o-mini", **extra: Any) -> dict[str, Any]:
    body = {"model": model, "messages": [{"role": "user", "content": text}], **extra}
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}


def jsonl(lines: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def parse_jsonl(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def ended(client: openai.OpenAI, batch_id: str) -> Any:
    return wait_until(
        lambda: (
            (b := client.batches.retrieve(batch_id)).status in ("completed", "cancelled", "expired") and b
        ),
        timeout_s=30,
        what=f"batch {batch_id} to end",
    )


def test_openai_batch_end_to_end(gateway_factory: Any, sim: Simulator, db_url: str, tmp_path: Path) -> None:
    sim.config.batches = True
    _key_id, raw = create_key(db_url)
    lines = [chat_line(f"req-{i}", f"question {i}") for i in range(6)]
    lines += [chat_line("dup-0", "question 0"), chat_line("dup-1", "question 1")]  # same requests again
    with gateway_factory(batch=batch_settings(tmp_path)) as gw:
        client = openai.OpenAI(base_url=gw.openai_url, api_key=raw, max_retries=0)
        uploaded = client.files.create(file=("input.jsonl", jsonl(lines)), purpose="batch")
        assert uploaded.purpose == "batch" and uploaded.bytes == len(jsonl(lines))
        assert client.files.retrieve(uploaded.id).filename == "input.jsonl"
        assert client.files.content(uploaded.id).content == jsonl(lines)
        batch = client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        assert batch.status == "in_progress" and batch.request_counts.total == 8
        batch = ended(client, batch.id)
        assert batch.status == "completed"
        assert batch.request_counts.completed == 8 and batch.request_counts.failed == 0
        assert batch.error_file_id is None
        out = parse_jsonl(client.files.content(batch.output_file_id).text)
        assert sorted(o["custom_id"] for o in out) == sorted(line["custom_id"] for line in lines)
        by_id = {o["custom_id"]: o for o in out}
        for o in out:
            assert o["response"]["status_code"] == 200
            assert o["response"]["body"]["object"] == "chat.completion"
        # duplicates share their original's answer; only 6 requests went upstream
        assert by_id["dup-0"]["response"]["body"] == by_id["req-0"]["response"]["body"]
        assert len(sim._batches.sent) == 6
        assert [b.id for b in client.batches.list()] == [batch.id]
        ran = [by_id[f"req-{i}"]["response"]["body"]["usage"] for i in range(6)]  # duplicates: not billed
        assert batch.usage is not None
        assert batch.usage.input_tokens == sum(u["prompt_tokens"] for u in ran) > 0
        assert batch.usage.output_tokens == sum(u["completion_tokens"] for u in ran)
        assert batch.usage.total_tokens == batch.usage.input_tokens + batch.usage.output_tokens
        extra = client.batches.retrieve(batch.id).model_extra["thriftgate"]
        assert extra["deduplicated"] == 2 and extra["saved_usd"] > 0
        assert any(f.id == batch.output_file_id for f in client.files.list())
    rows = [r for r in gw.rows() if r["path"] == "/v1/chat/completions"]
    assert len(rows) == 8
    paid = [r for r in rows if r["saving_mechanism"] == "batch"]
    assert len(paid) == 6
    for r in paid:  # half price: the saving equals the cost
        assert r["cost_usd"] > 0 and r["saving_usd"] == pytest.approx(r["cost_usd"])
        assert r["counterfactual_usd"] == pytest.approx(2 * r["cost_usd"])
    dups = [r for r in rows if r["cache"] == "batch-duplicate"]
    assert len(dups) == 2 and all(r["cost_usd"] == 0 and r["saving_usd"] > 0 for r in dups)


def test_bad_line_is_refused_naming_it(gateway_factory: Any, sim: Simulator, tmp_path: Path) -> None:
    lines = [chat_line("a", "x"), chat_line("b", "y")]
    lines[1]["body"]["messages"] = "not a list"
    with gateway_factory(batch=batch_settings(tmp_path)) as gw:
        client = openai.OpenAI(base_url=gw.openai_url, api_key="sk-client", max_retries=0)
        uploaded = client.files.create(file=("input.jsonl", jsonl(lines)), purpose="batch")
        with pytest.raises(openai.BadRequestError) as err:
            client.batches.create(
                input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
            )
        assert "Line 2" in err.value.message and "messages" in err.value.message
        wrong_url = jsonl([{**chat_line("a", "x"), "url": "/v1/embeddings"}])
        uploaded = client.files.create(file=("input.jsonl", wrong_url), purpose="batch")
        with pytest.raises(openai.BadRequestError, match="Line 1"):
            client.batches.create(
                input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
            )
        same_id = jsonl([chat_line("a", "x"), chat_line("a", "y")])
        uploaded = client.files.create(file=("input.jsonl", same_id), purpose="batch")
        with pytest.raises(openai.BadRequestError, match=r"Line 2.*custom_id"):
            client.batches.create(
                input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
            )
        assert list(client.batches.list()) == []


def test_partial_failures_go_to_the_error_file(gateway_factory: Any, sim: Simulator, tmp_path: Path) -> None:
    sim.config.batches = True
    lines = [chat_line("ok-1", "fine"), chat_line("bad", "no", max_tokens=0), chat_line("ok-2", "fine too")]
    with gateway_factory(batch=batch_settings(tmp_path)) as gw:
        client = openai.OpenAI(base_url=gw.openai_url, api_key="sk-client", max_retries=0)
        uploaded = client.files.create(file=("input.jsonl", jsonl(lines)), purpose="batch")
        batch = client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        batch = ended(client, batch.id)
        assert batch.status == "completed"
        assert (batch.request_counts.completed, batch.request_counts.failed) == (2, 1)
        out = parse_jsonl(client.files.content(batch.output_file_id).text)
        errors = parse_jsonl(client.files.content(batch.error_file_id).text)
        assert sorted(o["custom_id"] for o in out) == ["ok-1", "ok-2"]
        assert [e["custom_id"] for e in errors] == ["bad"]
        assert errors[0]["response"]["status_code"] == 400
        assert "max_tokens" in errors[0]["response"]["body"]["error"]["message"]


def test_another_key_sees_nothing(gateway_factory: Any, sim: Simulator, db_url: str, tmp_path: Path) -> None:
    sim.config.batches = True
    sim.config.batch_latency_s = 60
    _a, owner = create_key(db_url, name="owner")
    _b, other = create_key(db_url, name="other")
    with gateway_factory(batch=batch_settings(tmp_path)) as gw:
        mine = openai.OpenAI(base_url=gw.openai_url, api_key=owner, max_retries=0)
        theirs = openai.OpenAI(base_url=gw.openai_url, api_key=other, max_retries=0)
        uploaded = mine.files.create(file=("input.jsonl", jsonl([chat_line("a", "x")])), purpose="batch")
        with pytest.raises(openai.NotFoundError):
            theirs.files.retrieve(uploaded.id)
        with pytest.raises(openai.NotFoundError):
            theirs.files.content(uploaded.id)
        with pytest.raises(openai.NotFoundError):
            theirs.files.delete(uploaded.id)
        with pytest.raises(openai.NotFoundError):
            theirs.batches.create(
                input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
            )
        batch = mine.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        with pytest.raises(openai.NotFoundError):
            theirs.batches.retrieve(batch.id)
        with pytest.raises(openai.NotFoundError):
            theirs.batches.cancel(batch.id)
        assert list(theirs.batches.list()) == [] and list(theirs.files.list()) == []
        assert mine.batches.retrieve(batch.id).status == "in_progress"
        mine_an = anthropic.Anthropic(base_url=gw.url, api_key=owner, max_retries=0)
        theirs_an = anthropic.Anthropic(base_url=gw.url, api_key=other, max_retries=0)
        mb = mine_an.messages.batches.create(requests=[_message_request("m1", "hi")])
        with pytest.raises(anthropic.NotFoundError):
            theirs_an.messages.batches.retrieve(mb.id)
        with pytest.raises(anthropic.NotFoundError):
            theirs_an.messages.batches.cancel(mb.id)
        with pytest.raises(anthropic.NotFoundError):  # an OpenAI id is no message batch
            mine_an.messages.batches.retrieve(batch.id)
        mine.files.delete(uploaded.id)
        with pytest.raises(openai.NotFoundError):
            mine.files.retrieve(uploaded.id)


def test_cancel_keeps_finished_items(gateway_factory: Any, sim: Simulator, tmp_path: Path) -> None:
    sim.config.batches = True
    sim.config.batch_latency_s = 60  # upstream batches stay in progress until cancelled
    lines = [chat_line(f"r{i}", f"q{i}") for i in range(4)]
    with gateway_factory(batch=batch_settings(tmp_path)) as gw:
        client = openai.OpenAI(base_url=gw.openai_url, api_key="sk-client", max_retries=0)
        uploaded = client.files.create(file=("input.jsonl", jsonl(lines)), purpose="batch")
        batch = client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        wait_until(lambda: len(sim._batches.jobs) == 1, what="the upstream batch")
        cancelling = client.batches.cancel(batch.id)
        assert cancelling.status in ("cancelling", "cancelled")
        batch = ended(client, batch.id)
        assert batch.status == "cancelled" and batch.cancelled_at is not None
        assert batch.request_counts.completed == 0
        assert batch.model_extra["thriftgate"]["cancelled"] == 4
        upstream = next(iter(sim._batches.jobs.values()))
        assert upstream.cancelled_at is not None  # the cancel went upstream too
        with pytest.raises(openai.APIStatusError) as err:
            client.batches.cancel(batch.id)
        assert err.value.status_code == 409


def test_cancel_keeps_answers_already_received(gateway_factory: Any, sim: Simulator, tmp_path: Path) -> None:
    """Local fan-out items finish and stay; items not yet run are cancelled."""
    sim.config.batches = True
    sim.config.batch_latency_s = 60
    lines = [chat_line("first", "q", model="claude-haiku-4-5")]  # served by translation: fan-out
    lines += [chat_line(f"later{i}", f"q{i}") for i in range(3)]  # the OpenAI batch API (held upstream)
    with gateway_factory(batch=batch_settings(tmp_path)) as gw:
        client = openai.OpenAI(base_url=gw.openai_url, api_key="sk-client", max_retries=0)
        uploaded = client.files.create(file=("input.jsonl", jsonl(lines)), purpose="batch")
        batch = client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        wait_until(
            lambda: client.batches.retrieve(batch.id).request_counts.completed == 1, what="the fan-out item"
        )
        client.batches.cancel(batch.id)
        batch = ended(client, batch.id)
        assert batch.status == "cancelled"
        out = parse_jsonl(client.files.content(batch.output_file_id).text)
        assert [o["custom_id"] for o in out] == ["first"]
        assert out[0]["response"]["body"]["object"] == "chat.completion"


def test_expiry_keeps_partial_results(gateway_factory: Any, sim: Simulator, tmp_path: Path) -> None:
    sim.config.batches = True
    sim.config.batch_latency_s = 60
    sim.config.batch_expire_s = 0.3
    sim.config.batch_expire_keep = 2
    lines = [chat_line(f"r{i}", f"q{i}") for i in range(5)]
    with gateway_factory(batch=batch_settings(tmp_path)) as gw:
        client = openai.OpenAI(base_url=gw.openai_url, api_key="sk-client", max_retries=0)
        uploaded = client.files.create(file=("input.jsonl", jsonl(lines)), purpose="batch")
        batch = client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        batch = ended(client, batch.id)
        assert batch.status == "completed"  # the gateway's own window is 24 hours: the upstream's expired
        out = parse_jsonl(client.files.content(batch.output_file_id).text)
        errors = parse_jsonl(client.files.content(batch.error_file_id).text)
        assert sorted(o["custom_id"] for o in out) == ["r0", "r1"]
        assert sorted(e["custom_id"] for e in errors) == ["r2", "r3", "r4"]
        assert all(e["response"] is None and e["error"]["code"] == "batch_expired" for e in errors)


def test_job_expires_after_its_window(gateway_factory: Any, sim: Simulator, tmp_path: Path) -> None:
    sim.config.batches = True
    sim.config.batch_latency_s = 60
    lines = [chat_line(f"r{i}", f"q{i}") for i in range(3)]
    with gateway_factory(batch=batch_settings(tmp_path, completion_window_s=0.5)) as gw:
        client = openai.OpenAI(base_url=gw.openai_url, api_key="sk-client", max_retries=0)
        uploaded = client.files.create(file=("input.jsonl", jsonl(lines)), purpose="batch")
        batch = client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        batch = ended(client, batch.id)
        assert batch.status == "expired" and batch.expired_at is not None
        errors = parse_jsonl(client.files.content(batch.error_file_id).text)
        assert sorted(e["custom_id"] for e in errors) == ["r0", "r1", "r2"]
        assert all(e["error"]["code"] == "batch_expired" for e in errors)
        assert batch.output_file_id is None


def _message_request(custom_id: str, text: str, **params: Any) -> Any:
    return {
        "custom_id": custom_id,
        "params": {
            "model": "claude-haiku-4-5",
            "max_tokens": 64,
            "messages": [{"role": "user", "content": text}],
            **params,
        },
    }


def test_anthropic_message_batch_end_to_end(gateway_factory: Any, sim: Simulator, tmp_path: Path) -> None:
    sim.config.batches = True
    with gateway_factory(batch=batch_settings(tmp_path)) as gw:
        client = anthropic.Anthropic(base_url=gw.url, api_key="sk-ant-client", max_retries=0)
        requests = [_message_request(f"m{i}", f"hello {i}") for i in range(4)]
        requests.append(_message_request("bad", "x", max_tokens=0))  # refused upstream: errored
        requests.append(_message_request("again", "hello 0"))  # a duplicate of m0
        batch = client.messages.batches.create(requests=requests)
        assert batch.processing_status == "in_progress"
        batch = wait_until(
            lambda: (b := client.messages.batches.retrieve(batch.id)).processing_status == "ended" and b,
            timeout_s=30,
        )
        assert batch.request_counts.succeeded == 5 and batch.request_counts.errored == 1
        results = {r.custom_id: r.result for r in client.messages.batches.results(batch.id)}
        assert set(results) == {"m0", "m1", "m2", "m3", "bad", "again"}
        assert results["m0"].type == "succeeded" and results["m0"].message.content[0].type == "text"
        assert results["again"].type == "succeeded" and results["again"].message == results["m0"].message
        assert results["bad"].type == "errored"
        assert [b.id for b in client.messages.batches.list()] == [batch.id]
        assert client.messages.batches.delete(batch.id).type == "message_batch_deleted"
        with pytest.raises(anthropic.NotFoundError):
            client.messages.batches.retrieve(batch.id)
    rows = [r for r in gw.rows() if r["path"] == "/v1/messages" and r["saving_mechanism"] == "batch"]
    assert len(rows) == 4


def test_anthropic_cancel(gateway_factory: Any, sim: Simulator, tmp_path: Path) -> None:
    sim.config.batches = True
    sim.config.batch_latency_s = 60
    with gateway_factory(batch=batch_settings(tmp_path)) as gw:
        client = anthropic.Anthropic(base_url=gw.url, api_key="sk-ant-client", max_retries=0)
        batch = client.messages.batches.create(requests=[_message_request(f"m{i}", "q") for i in range(3)])
        wait_until(lambda: len(sim._batches.jobs) == 1, what="the upstream batch")
        assert client.messages.batches.cancel(batch.id).processing_status in ("canceling", "ended")
        batch = wait_until(
            lambda: (b := client.messages.batches.retrieve(batch.id)).processing_status == "ended" and b,
            timeout_s=30,
        )
        assert batch.request_counts.canceled == 3
        pending = client.messages.batches.create(requests=[_message_request("p", "q")])
        with pytest.raises(anthropic.BadRequestError, match="cancel it first"):
            client.messages.batches.delete(pending.id)
        assert {r.result.type for r in client.messages.batches.results(batch.id)} == {"canceled"}


def test_anthropic_bad_request_named(gateway_factory: Any, sim: Simulator, tmp_path: Path) -> None:
    with gateway_factory(batch=batch_settings(tmp_path)) as gw:
        client = anthropic.Anthropic(base_url=gw.url, api_key="sk-ant-client", max_retries=0)
        bad = _message_request("b", "x")
        del bad["params"]["max_tokens"]
        with pytest.raises(anthropic.BadRequestError, match=r"requests\.1\.params.*max_tokens"):
            client.messages.batches.create(requests=[_message_request("a", "x"), bad])


@pytest.mark.parametrize("endpoint", ["/v1/embeddings", "/v1/responses"])
def test_embeddings_and_responses_batches(
    gateway_factory: Any, sim: Simulator, tmp_path: Path, endpoint: str
) -> None:
    sim.config.batches = True
    if endpoint == "/v1/embeddings":
        bodies = [{"model": "text-embedding-3-small", "input": f"text {i}"} for i in range(3)]
    else:
        bodies = [{"model": "gpt-4o-mini", "input": f"question {i}"} for i in range(3)]
    lines = [
        {"custom_id": f"x{i}", "method": "POST", "url": endpoint, "body": b} for i, b in enumerate(bodies)
    ]
    with gateway_factory(batch=batch_settings(tmp_path)) as gw:
        client = openai.OpenAI(base_url=gw.openai_url, api_key="sk-client", max_retries=0)
        uploaded = client.files.create(file=("input.jsonl", jsonl(lines)), purpose="batch")
        batch = client.batches.create(input_file_id=uploaded.id, endpoint=endpoint, completion_window="24h")  # type: ignore[arg-type]
        batch = ended(client, batch.id)
        out = parse_jsonl(client.files.content(batch.output_file_id).text)
    assert sorted(o["custom_id"] for o in out) == ["x0", "x1", "x2"]
    kind = "list" if endpoint == "/v1/embeddings" else "response"
    assert all(o["response"]["body"]["object"] == kind for o in out)
    rows = [r for r in gw.rows() if r["path"] == endpoint]
    assert len(rows) == 3 and all(r["saving_mechanism"] == "batch" and r["input_tokens"] > 0 for r in rows)
