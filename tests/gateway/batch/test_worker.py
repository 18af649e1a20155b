"""The worker's durability: a gateway killed with SIGKILL mid-job and restarted finishes the job with every
item exactly once (and nothing sent upstream twice); two gateway processes on one database share a job
and run each item once. Both on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import signal
from collections import Counter
from pathlib import Path
from typing import Any

import openai

from gateway.storage import upgrade
from tests.gateway.api.conftest import _sim_server, sim, sim_url
from tests.gateway.batch.conftest import gateway_process, write_config
from tests.upstream import Simulator
from tests.waiting import wait_until

__all__ = ["_sim_server", "sim", "sim_url"]  # the surface fixtures, shared with tests/gateway/api/


def chat_line(custom_id: str, text: str, model: str = "gpt-4o-mini") -> dict[str, Any]:
    body = {"model": model, "messages": [{"role": "user", "content": text}]}
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}


def jsonl(lines: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def _finished(client: openai.OpenAI, batch_id: str) -> Any:
    return wait_until(
        lambda: (b := client.batches.retrieve(batch_id)).status == "completed" and b,
        timeout_s=90,
        what="the batch to complete",
    )


def _output(client: openai.OpenAI, batch: Any) -> list[dict[str, Any]]:
    text = client.files.content(batch.output_file_id).text
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_sigkill_mid_job_then_restart_runs_every_item_once(
    sim: Simulator, sim_url: str, database_url: str, tmp_path: Path
) -> None:
    upgrade(database_url)
    sim.config.batches = True
    sim.config.batch_latency_s = 1.5  # upstream batches stay in progress for a while
    sim.config.ttft_s = 0.15  # every upstream call is slow: the kill lands between them
    config = write_config(
        tmp_path / "gw.yaml", sim_url, database_url, tmp_path / "files", upload_max_items=4, claim_size=4
    )
    lines = [chat_line(f"item-{i}", f"question {i}") for i in range(24)]
    with gateway_process(config, tmp_path) as (url, proc):
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="sk-client", max_retries=0)
        uploaded = client.files.create(file=("in.jsonl", jsonl(lines)), purpose="batch")
        batch = client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        wait_until(lambda: len(sim._batches.jobs) >= 2, timeout_s=30, what="some upstream batches")
        proc.send_signal(signal.SIGKILL)  # mid-job: some batches created, others not yet
        proc.wait(timeout=30)
    created_before = len(sim._batches.jobs)
    assert created_before < 6, "the job was fully submitted before the kill: the test proved nothing"
    with gateway_process(config, tmp_path) as (url, _proc):
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="sk-client", max_retries=0)
        batch = _finished(client, batch.id)
        out = _output(client, batch)
    ids = Counter(o["custom_id"] for o in out)
    assert ids == Counter(line["custom_id"] for line in lines)  # every item exactly once
    assert all(o["response"]["status_code"] == 200 for o in out)
    assert batch.error_file_id is None
    sent = Counter(sim._batches.sent)  # upstream: each item (by its gateway id) in one batch only
    assert len(sent) == 24 and max(sent.values()) == 1


def test_two_gateways_share_a_job_and_run_each_item_once(
    sim: Simulator, sim_url: str, database_url: str, tmp_path: Path
) -> None:
    upgrade(database_url)
    sim.config.batches = True
    sim.config.ttft_s = 0.02
    config = write_config(
        tmp_path / "gw.yaml",
        sim_url,
        database_url,
        tmp_path / "files",
        upload_max_items=3,
        claim_size=3,
        fanout_concurrency=2,
    )
    lines = [chat_line(f"oa-{i}", f"batch api {i}") for i in range(15)]
    lines += [chat_line(f"an-{i}", f"fan out {i}", model="claude-haiku-4-5") for i in range(15)]
    with gateway_process(config, tmp_path) as (url_a, _a), gateway_process(config, tmp_path) as (url_b, _b):
        client_a = openai.OpenAI(base_url=f"{url_a}/v1", api_key="sk-client", max_retries=0)
        client_b = openai.OpenAI(base_url=f"{url_b}/v1", api_key="sk-client", max_retries=0)
        uploaded = client_a.files.create(file=("in.jsonl", jsonl(lines)), purpose="batch")
        batch = client_a.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        batch = _finished(client_b, batch.id)  # the other replica sees the same job
        out = _output(client_b, batch)
    assert Counter(o["custom_id"] for o in out) == Counter(line["custom_id"] for line in lines)
    assert all(o["response"]["status_code"] == 200 for o in out)
    sent = Counter(sim._batches.sent)
    assert len(sent) == 15 and max(sent.values()) == 1
    fanned = Counter(
        r.json["messages"][0]["content"] for r in sim.requests if r.path == "/v1/messages" and r.json
    )
    assert len(fanned) == 15 and max(fanned.values()) == 1
