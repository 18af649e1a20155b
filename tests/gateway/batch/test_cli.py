"""``thriftgate batch``: submit with --model and --wait, status, results, list, cancel, against a running
gateway with the simulator's batch API behind it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from gateway.cli import main
from tests.gateway.api.conftest import _sim_server, db_url, gateway_factory, sim, sim_url
from tests.gateway.api.test_batches import batch_settings
from tests.upstream import Simulator

__all__ = ["_sim_server", "db_url", "gateway_factory", "sim", "sim_url"]


def test_submit_wait_status_results_list(
    gateway_factory: Any, sim: Simulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sim.config.batches = True
    source = tmp_path / "in.jsonl"
    lines = [
        {
            "custom_id": f"c{i}",
            "url": "/v1/chat/completions",
            "body": {"messages": [{"role": "user", "content": f"q{i}"}]},
        }
        for i in range(3)
    ]
    source.write_text("".join(json.dumps(line) + "\n" for line in lines))
    with gateway_factory(batch=batch_settings(tmp_path)) as gw:
        common = ["--url", gw.url, "--key", "sk-client"]
        assert main(["batch", "submit", str(source), "--model", "gpt-4o-mini", "--wait", *common]) == 0
        captured = capsys.readouterr()
        batch_id = captured.out.strip()
        assert batch_id.startswith("batch_")
        assert "completed" in captured.err and "done 3/3" in captured.err and "saved $" in captured.err
        assert main(["batch", "status", batch_id, *common]) == 0
        assert "done 3/3" in capsys.readouterr().out
        out = tmp_path / "out.jsonl"
        assert main(["batch", "results", batch_id, "-o", str(out), *common]) == 0
        results = [json.loads(line) for line in out.read_text().splitlines()]
        assert sorted(r["custom_id"] for r in results) == ["c0", "c1", "c2"]
        assert all(r["response"]["body"]["model"] == "gpt-4o-mini" for r in results)
        capsys.readouterr()
        assert main(["batch", "list", *common]) == 0
        assert batch_id in capsys.readouterr().out
        assert main(["batch", "cancel", batch_id, *common]) == 1  # it has ended
        assert "409" in capsys.readouterr().err


def test_submit_refused_line_is_reported(
    gateway_factory: Any, sim: Simulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps({"custom_id": "a", "url": "/v1/chat/completions", "body": {}}) + "\n")
    with gateway_factory(batch=batch_settings(tmp_path)) as gw:
        assert main(["batch", "submit", str(source), "--url", gw.url, "--key", "sk-client"]) == 1
    assert "Line 1" in capsys.readouterr().err
