"""``thriftgate replay``: the command line of ``gateway.replay``.

    thriftgate replay --target CONFIG.yaml [--target ...] [--config SOURCE.yaml] [--since 7d | ISO]
                      [--until ISO] [--key ID|NAME] [--model M] [--limit N] [--agreement embedding|exact]
                      [--format table|json] [--no-save]

Reads the slice from the configured database (``--config``, as every command), replays it dry through each
``--target`` configuration and prints, per target, the cost against the recorded cost, the saving by
mechanism and the agreement with the answers actually served. The result is also written under
``<data_dir>/replays/`` (unless ``--no-save``), where the dashboard's replay page draws the frontier.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


class ReplayCLIError(Exception):
    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "replay", parents=[common], help="replay logged requests dry through other configurations"
    )
    p.add_argument(
        "--target",
        action="append",
        required=True,
        metavar="CONFIG",
        help="a config to replay through (repeatable)",
    )
    p.add_argument("--since", default=None, help="today, <n>h, <n>d or an ISO time (default: everything)")
    p.add_argument("--until", default=None, help="an ISO time (default: now)")
    p.add_argument("--key", default=None, help="only this virtual key (id or name)")
    p.add_argument("--model", default=None, help="only requests for this model (as the client named it)")
    p.add_argument("--limit", type=int, default=1000, help="at most this many requests, oldest first")
    p.add_argument("--agreement", choices=("embedding", "exact"), default="embedding")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.add_argument("--no-save", action="store_true", help="do not keep the result for the dashboard")
    p.set_defaults(run=run)


def _when(text: str | None, now: datetime) -> datetime | None:
    from gateway.reports import queries

    if text is None:
        return None
    try:
        return queries.window_start(now, text)
    except ValueError:
        pass
    try:
        found = datetime.fromisoformat(text)
    except ValueError:
        raise ReplayCLIError(f"not a time: {text!r} (today, <n>h, <n>d or an ISO time)", status=2) from None
    return found if found.tzinfo is not None else found.replace(tzinfo=UTC)


def run(args: argparse.Namespace) -> int:
    from gateway.replay import ReplayError, Slice, compare, load_slice, replay, save_result, similarities
    from gateway.settings import SettingsError, load_settings
    from gateway.storage import make_engine, make_sessionmaker, upgrade

    try:
        source = load_settings(getattr(args, "config", None))
        targets = {Path(t).stem: load_settings(t, env={}) for t in args.target}
    except SettingsError as exc:
        raise ReplayCLIError(str(exc), status=2) from None
    if args.limit < 1:
        raise ReplayCLIError("--limit must be at least 1", status=2)
    now = datetime.now(UTC)
    where = Slice(_when(args.since, now), _when(args.until, now), args.key, args.model, args.limit)
    upgrade(source.database_url)

    async def go() -> dict[str, Any]:
        engine = make_engine(source.database_url)
        try:
            sm = make_sessionmaker(engine)
            recorded, skipped = await load_slice(sm, where)
            if not recorded:
                raise ReplayError(
                    "nothing to replay in this slice: content logging (content_log.enabled) must have been on "
                    f"when the requests were made (skipped: {skipped})"
                )
            embed = None
            if args.agreement == "embedding":
                from cache.embedder import MiniLMEmbedder

                embed = MiniLMEmbedder()
            results: dict[str, Any] = {}
            for name, settings in targets.items():
                outcome = await replay(recorded, settings, sm)
                sims = similarities(embed, recorded, outcome.answers) if embed is not None else None
                results[name] = compare(recorded, outcome, sims)
            return {
                "when": now.isoformat(),
                "slice": {k: None if v is None else str(v) for k, v in asdict(where).items()},
                "skipped": asdict(skipped),
                "targets": results,
            }
        finally:
            await engine.dispose()

    try:
        result = asyncio.run(go())
    except ReplayError as exc:
        raise ReplayCLIError(str(exc)) from None
    if not args.no_save:
        result["saved_to"] = str(save_result(source.data_dir, result))
    print(json.dumps(result, indent=1, default=str) if args.format == "json" else render(result))
    return 0


def render(result: dict[str, Any]) -> str:
    """The result as a Markdown table (one row per target)."""
    mechs = sorted(
        {
            m
            for t in result["targets"].values()
            for m in (*t["saving_by_mechanism"], *t["recorded_saving_by_mechanism"])
        }
    )
    lines = [
        "| target | requests | recorded cost | replayed cost | vs recorded | "
        + " | ".join(f"saving: {m}" for m in mechs)
        + " | agreement | answers changed | model changed | cache hits |",
        "|---" * (9 + len(mechs)) + "|",
    ]
    first = next(iter(result["targets"].values()))
    lines.insert(
        2,
        f"| (recorded) | {first['requests']} | ${first['recorded_cost_usd']:.6f} | | | "
        + " | ".join(f"${first['recorded_saving_by_mechanism'].get(m, 0.0):.6f}" for m in mechs)
        + " | 1.000 | | | |",
    )
    for name, t in result["targets"].items():
        ratio = "n/a" if t["cost_vs_recorded"] is None else f"{t['cost_vs_recorded']:.1%}"
        agreement = "n/a" if t["agreement"] is None else f"{t['agreement']:.3f}"
        lines.append(
            f"| {name} | {t['requests']} | ${t['recorded_cost_usd']:.6f} | ${t['cost_usd']:.6f} | {ratio} | "
            + " | ".join(f"${t['saving_by_mechanism'].get(m, 0.0):.6f}" for m in mechs)
            + f" | {agreement} | {t['answers_changed']} | {t['model_changed']} | {t['cache_hits']} |"
        )
    lines += [
        "",
        f"Skipped: {result['skipped']}. Agreement: {first['agreement_measure']} against the answer served; "
        "a request now served by another model keeps its recorded answer in a dry run, so its quality is not "
        "measured ('model changed').",
    ]
    return "\n".join(lines)
