"""``thriftgate batch ...``: batch jobs from the command line, through a running gateway's OpenAI batch
endpoints (the same files and jobs the SDKs see, owned by the key used).

    thriftgate batch submit FILE.jsonl [--model M] [--endpoint E] [--wait]
    thriftgate batch status ID | results ID -o OUT.jsonl | cancel ID | list

The gateway is ``--url`` (default ``$THRIFTGATE_URL``, else http://127.0.0.1:8080), the key ``--key``
(default ``$THRIFTGATE_API_KEY``, else ``$OPENAI_API_KEY``). A line's ``url`` names the endpoint; lines may
leave out ``method``; ``--model`` sets the model of every line.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import orjson

_ENDED = ("completed", "failed", "expired", "cancelled")


class BatchCLIError(Exception):
    """A gateway answer the command cannot go on from (its message is printed; exit status 1)."""


def add_parser(sub: Any) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", help="the gateway (default: $THRIFTGATE_URL or http://127.0.0.1:8080)")
    common.add_argument("--key", help="the API key (default: $THRIFTGATE_API_KEY or $OPENAI_API_KEY)")
    batch = sub.add_parser("batch", help="batch jobs through a running gateway").add_subparsers(
        title="batch commands", metavar="ACTION"
    )
    submit = batch.add_parser("submit", parents=[common], help="upload a JSONL file and start a batch")
    submit.add_argument("file", type=Path)
    submit.add_argument("--model", help="the model for every line")
    submit.add_argument("--endpoint", help="default: the first line's url")
    submit.add_argument("--wait", action="store_true", help="show progress until the batch ends")
    submit.set_defaults(run=_submit)
    status = batch.add_parser("status", parents=[common], help="a batch's status and progress")
    status.add_argument("id")
    status.set_defaults(run=_status)
    results = batch.add_parser("results", parents=[common], help="download a batch's results")
    results.add_argument("id")
    results.add_argument(
        "-o", "--output", type=Path, required=True, help="results (JSONL); errors after them"
    )
    results.set_defaults(run=_results)
    cancel = batch.add_parser("cancel", parents=[common], help="cancel a batch (finished items are kept)")
    cancel.add_argument("id")
    cancel.set_defaults(run=_cancel)
    listing = batch.add_parser("list", parents=[common], help="the key's batches, newest first")
    listing.set_defaults(run=_list)


def _client(args: argparse.Namespace) -> httpx.Client:
    url = args.url or os.environ.get("THRIFTGATE_URL") or "http://127.0.0.1:8080"
    key = args.key or os.environ.get("THRIFTGATE_API_KEY") or os.environ.get("OPENAI_API_KEY")
    headers = {"authorization": f"Bearer {key}"} if key else {}
    return httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=120)


def _check(resp: httpx.Response) -> Any:
    if resp.status_code >= 400:
        try:
            message = resp.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = resp.text[:500]
        raise BatchCLIError(f"{resp.status_code}: {message}")
    return resp.json()


def _endpoint(path: Path) -> str:
    with open(path, "rb") as f:
        for raw in f:
            if raw.strip():
                line = orjson.loads(raw)
                url = line.get("url") if isinstance(line, dict) else None
                return url if isinstance(url, str) else "/v1/chat/completions"
    raise BatchCLIError(f"{path} has no requests")


def progress_line(batch: dict[str, Any]) -> str:
    """One line of progress: done, failed, spent and saved."""
    counts = batch.get("request_counts") or {}
    extra = batch.get("thriftgate") or {}
    total = counts.get("total", 0)
    done = counts.get("completed", 0)
    failed = counts.get("failed", 0)
    width = 30
    filled = int(width * (done + failed) / total) if total else width
    bar = "#" * filled + "-" * (width - filled)
    return (
        f"[{bar}] {batch['status']:<11} done {done}/{total}  failed {failed}  "
        f"spent ${extra.get('spent_usd', 0):.6f}  saved ${extra.get('saved_usd', 0):.6f}"
    )


def _submit(args: argparse.Namespace) -> int:
    endpoint = args.endpoint or _endpoint(args.file)
    with _client(args) as client:
        with open(args.file, "rb") as f:
            uploaded = _check(
                client.post("/v1/files", data={"purpose": "batch"}, files={"file": (args.file.name, f)})
            )
        body: dict[str, Any] = {
            "input_file_id": uploaded["id"],
            "endpoint": endpoint,
            "completion_window": "24h",
        }
        if args.model:
            body["model"] = args.model
        batch = _check(client.post("/v1/batches", json=body))
        print(batch["id"])
        if not args.wait:
            return 0
        while True:
            sys.stderr.write("\r" + progress_line(batch))
            sys.stderr.flush()
            if batch["status"] in _ENDED:
                sys.stderr.write("\n")
                return 0 if batch["status"] == "completed" else 1
            time.sleep(0.5)
            batch = _check(client.get(f"/v1/batches/{batch['id']}"))


def _status(args: argparse.Namespace) -> int:
    with _client(args) as client:
        batch = _check(client.get(f"/v1/batches/{args.id}"))
    print(progress_line(batch))
    print(orjson.dumps(batch, option=orjson.OPT_INDENT_2).decode())
    return 0


def _results(args: argparse.Namespace) -> int:
    with _client(args) as client:
        batch = _check(client.get(f"/v1/batches/{args.id}"))
        if batch["status"] not in _ENDED:
            raise BatchCLIError(f"batch {args.id} is {batch['status']}: its results are not ready")
        lines = 0
        with open(args.output, "wb") as out:
            for field in ("output_file_id", "error_file_id"):
                if batch.get(field):
                    with client.stream("GET", f"/v1/files/{batch[field]}/content") as resp:
                        if resp.status_code >= 400:
                            resp.read()
                            _check(resp)
                        for chunk in resp.iter_bytes():
                            out.write(chunk)
                            lines += chunk.count(b"\n")
    print(f"{lines} results written to {args.output}")
    return 0


def _cancel(args: argparse.Namespace) -> int:
    with _client(args) as client:
        batch = _check(client.post(f"/v1/batches/{args.id}/cancel"))
    print(progress_line(batch))
    return 0


def _list(args: argparse.Namespace) -> int:
    with _client(args) as client:
        page = _check(client.get("/v1/batches", params={"limit": 100}))
    for batch in page["data"]:
        print(f"{batch['id']}  {batch['endpoint']:<21} {progress_line(batch)}")
    return 0
