"""What the wire translation costs per request: a typical 2-turn chat with a system prompt, translated from
one API to the other and its answer translated back, against the JSON work that any proxy does for the
same bodies (decode and encode, the baseline), in the same run.

    .venv/bin/python bench/translate.py            # ~20 s
    .venv/bin/python bench/translate.py --quick    # ~5 s

Measured per request (median of rounds, each the mean of many calls, one process, no I/O):

- ``cross``: parse the client's request, render it for the other API, parse the upstream's answer, render
  it for the client (OpenAI → Anthropic and back, and the reverse);
- ``brief``: the part the gateway adds once the client body is parsed: request render + response parse +
  response render;
- ``same``: the same four steps with both ends in one API (what a cache hit or the local engine costs);
- ``stream``: per SSE event of the upstream's stream (parse + render), against the forwarding tap alone;
- ``baseline``: ``orjson.loads`` of the request and the answer and ``orjson.dumps`` of both.

The answers are the provider simulator's (``tests/upstream``), so they carry real usage with cache fields.
Writes ``bench/results/translate.json`` (machine, versions, raw numbers) and ``bench/results/translate.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.host import machine  # noqa: E402
from gateway import wire  # noqa: E402
from gateway.sse import AnthropicTap, OpenAIChatTap  # noqa: E402
from gateway.types import WireAPI  # noqa: E402
from tests.gateway.wire.sdk import Upstream, reply_json, stream_events  # noqa: E402

OPENAI, ANTHROPIC = WireAPI.OPENAI_CHAT, WireAPI.ANTHROPIC_MESSAGES
RESULTS = ROOT / "bench" / "results"
SYSTEM = "You are a concise assistant for a travel company. Answer in two sentences at most."
TURNS = [
    ("user", "What is the best time of year to visit Lisbon?"),
    ("assistant", "Spring and early autumn: mild weather, fewer crowds and lower prices than in summer."),
    ("user", "And what should I not miss there on a first visit?"),
]
CLIENT_BODY = {
    OPENAI: {
        "model": "gpt-4o-mini",
        "messages": [{"role": "system", "content": SYSTEM}] + [{"role": r, "content": t} for r, t in TURNS],
        "max_tokens": 256,
        "temperature": 0.7,
    },
    ANTHROPIC: {
        "model": "claude-haiku-4-5",
        "system": SYSTEM,
        "messages": [{"role": r, "content": t} for r, t in TURNS],
        "max_tokens": 256,
        "temperature": 0.7,
    },
}
UPSTREAM_MODEL = {OPENAI: "gpt-4o-mini", ANTHROPIC: "claude-haiku-4-5"}


def per_call_us(fn: Callable[[], object], *, rounds: int, min_time: float) -> dict[str, float]:
    """Median and spread over ``rounds`` of the mean time per call, each round running ``fn`` for at
    least ``min_time`` seconds."""
    n = 1
    while True:  # calibrate the calls per round
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        elapsed = time.perf_counter() - t0
        if elapsed >= min_time / 4:
            break
        n *= 2
    n = max(1, int(n * min_time / elapsed))
    samples = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        samples.append((time.perf_counter() - t0) / n * 1e6)
    return {
        "median_us": statistics.median(samples),
        "min_us": min(samples),
        "max_us": max(samples),
        "calls": n,
    }


def answer(upstream_api: WireAPI, body: dict[str, Any], *, stream: bool = False) -> Any:
    up = Upstream()
    result = up.openai(body) if upstream_api is OPENAI else up.anthropic(body)
    return list(stream_events(result)) if stream else reply_json(result)


def scenarios() -> dict[str, tuple[Callable[[], object], WireAPI, WireAPI]]:
    out: dict[str, tuple[Callable[[], object], WireAPI, WireAPI]] = {}
    for client, upstream in (
        (OPENAI, ANTHROPIC),
        (ANTHROPIC, OPENAI),
        (OPENAI, OPENAI),
        (ANTHROPIC, ANTHROPIC),
    ):
        client_body = CLIENT_BODY[client]
        req = wire.parse_request(client, client_body)
        upstream_body = wire.render_request(upstream, req, model=UPSTREAM_MODEL[upstream])
        upstream_answer = answer(upstream, upstream_body)
        kind = "cross" if client is not upstream else "same"
        label = f"{client.value} → {upstream.value}"

        def full(
            c: WireAPI = client, u: WireAPI = upstream, b: Any = client_body, a: Any = upstream_answer
        ) -> bytes:
            r = wire.parse_request(c, b)
            wire.render_request(u, r, model=UPSTREAM_MODEL[u])
            return wire.render_response(c, wire.parse_response(u, a), r)

        def brief(
            c: WireAPI = client, u: WireAPI = upstream, r: Any = req, a: Any = upstream_answer
        ) -> bytes:
            wire.render_request(u, r, model=UPSTREAM_MODEL[u])
            return wire.render_response(c, wire.parse_response(u, a), r)

        def baseline(b: Any = client_body, a: Any = upstream_answer) -> bytes:
            orjson.loads(orjson.dumps(b))
            return orjson.dumps(orjson.loads(orjson.dumps(a)))

        out[f"{kind}: {label}"] = (full, client, upstream)
        out[f"brief: {label}"] = (brief, client, upstream)
        if kind == "cross":
            out[f"baseline: {label}"] = (baseline, client, upstream)
    return out


def stream_costs(rounds: int, min_time: float) -> list[dict[str, Any]]:
    rows = []
    for client, upstream in ((OPENAI, ANTHROPIC), (ANTHROPIC, OPENAI)):
        req = wire.parse_request(client, {**CLIENT_BODY[client], "stream": True})
        body = wire.render_request(upstream, req, model=UPSTREAM_MODEL[upstream])
        events = answer(upstream, body, stream=True)

        def translate(c: WireAPI = client, u: WireAPI = upstream, r: Any = req, evs: Any = events) -> bytes:
            parser, renderer = wire.stream_parser(u), wire.stream_renderer(c, r)
            out = [renderer.render(e) for raw in evs for e in parser.feed(raw)]
            return b"".join(out) + renderer.finish()

        def tap(u: WireAPI = upstream, evs: Any = events) -> None:
            t = OpenAIChatTap(strip_usage_chunk=True) if u is OPENAI else AnthropicTap()
            for raw in evs:
                t.on_event(raw)

        n = len(events)
        t = per_call_us(translate, rounds=rounds, min_time=min_time)
        b = per_call_us(tap, rounds=rounds, min_time=min_time)
        rows.append(
            {
                "direction": f"{upstream.value} stream → {client.value} client",
                "events": n,
                "translate_us_per_event": t["median_us"] / n,
                "tap_us_per_event": b["median_us"] / n,
                "translate_us_per_stream": t["median_us"],
                "raw": {"translate": t, "tap": b},
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    rounds, min_time = (5, 0.1) if args.quick else (15, 0.3)
    report: dict[str, Any] = {
        "benchmark": "translate",
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": machine(),
        "versions": {p: version(p) for p in ("orjson", "openai", "anthropic")},
        "rounds": rounds,
        "requests": {},
    }
    for name, (fn, _, _) in scenarios().items():
        report["requests"][name] = per_call_us(fn, rounds=rounds, min_time=min_time)
        print(f"{name:55s} {report['requests'][name]['median_us']:8.1f} µs", flush=True)
    report["streams"] = stream_costs(rounds, min_time)
    report["machine"]["loadavg_at_end"] = os.getloadavg()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "translate.json").write_text(json.dumps(report, indent=1, ensure_ascii=False))
    (args.out / "translate.md").write_text(markdown(report))
    print(markdown(report))


def markdown(report: dict[str, Any]) -> str:
    req = report["requests"]
    lines = [
        "# Wire translation cost",
        "",
        f"{report['date']}, {report['machine']['cpu']} ({report['machine']['cores']} cores), "
        f"load average {report['machine']['loadavg_at_start'][0]:.2f} at start, "
        f"{report['machine']['loadavg_at_end'][0]:.2f} at end; Python {report['machine']['python']}, "
        f"orjson {report['versions']['orjson']}. Median of {report['rounds']} rounds; one process, no I/O.",
        "",
        "A 2-turn chat with a system prompt (request ~0.5 kB), answered by the provider simulator.",
        "",
        "| direction (client → upstream) | full: parse + render request, parse + render answer | "
        "brief: render request + parse + render answer | baseline: JSON decode + encode of both | "
        "full / baseline |",
        "|---|---|---|---|---|",
    ]
    for label in ("openai.chat → anthropic.messages", "anthropic.messages → openai.chat"):
        full, brief, base = req[f"cross: {label}"], req[f"brief: {label}"], req[f"baseline: {label}"]
        lines.append(
            f"| {label} | {full['median_us']:.1f} µs | {brief['median_us']:.1f} µs | "
            f"{base['median_us']:.1f} µs | {full['median_us'] / base['median_us']:.1f}× |"
        )
    for label in ("openai.chat → openai.chat", "anthropic.messages → anthropic.messages"):
        full, brief = req[f"same: {label}"], req[f"brief: {label}"]
        lines.append(
            f"| {label} (through canonical) | {full['median_us']:.1f} µs | {brief['median_us']:.1f} µs | — | — |"
        )
    lines += [
        "",
        "Streams, per upstream SSE event (parse + render into the other API), against the forwarding tap "
        "that reads usage from the same events:",
        "",
        "| direction | events | translate per event | tap per event | ratio |",
        "|---|---|---|---|---|",
    ]
    for row in report["streams"]:
        lines.append(
            f"| {row['direction']} | {row['events']} | {row['translate_us_per_event']:.2f} µs | "
            f"{row['tap_us_per_event']:.2f} µs | {row['translate_us_per_event'] / row['tap_us_per_event']:.1f}× |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
