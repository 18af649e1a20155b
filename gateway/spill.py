"""The request log's files under the data directory: spilled rows (waiting for the database) and
quarantined rows (refused by it).

    <data_dir>/spill/<database>/request_log-<ns>-<pid>-<id>.jsonl   rows not yet written; replayed
    <data_dir>/quarantine/request_log-<YYYYMMDD>.jsonl      rows the database refused, one JSON object a
                                                            line: {"at", "error", "source", "row" | "raw"}

``write_rows`` is the one way rows reach the database from here and from the writer: one transaction for
the lot; if that fails because of the rows (``gateway.storage.failures``), one transaction per row, and a
row that still fails is quarantined, so one bad row never blocks the rest. ``replay_spill`` loads spill
files back with it and never stops at one bad file or line: those go to the quarantine and are reported.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.logs import get_logger
from gateway.storage import repo
from gateway.storage.failures import blame
from gateway.storage.logrow import clean_row

log = get_logger(__name__)

SPILL_GLOB = "request_log-*.jsonl"
CLAIMED_SUFFIX = ".replaying"
SPILL_FILE_ROWS = 10_000
"""Most rows in one spill file (a file is replayed in one transaction)."""

Row = dict[str, Any]
SpendCallback = Callable[[Mapping[str, tuple[float, float]]], None]


def describe(exc: BaseException) -> str:
    """``Type: first line of the message``, for logs and the quarantine."""
    text = str(exc)
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"[:1000]


class Quarantine:
    """Appends rows the database refused to a JSONL file per day under ``directory``; ``count`` is how
    many this process has quarantined. Never raises: a row that cannot be kept is logged instead."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.count = 0

    def add(self, row: Mapping[str, Any], exc: BaseException | str, *, source: str = "writer") -> None:
        """Quarantines one row (a dict) with the reason it was refused."""
        self._append({"row": dict(row)}, exc, source)

    def add_raw(self, raw: bytes, exc: BaseException | str, *, source: str) -> None:
        """Quarantines one line of a spill file that is not a row (as text, invalid UTF-8 replaced)."""
        self._append({"raw": raw.decode("utf-8", "replace")}, exc, source)

    def _append(self, entry: dict[str, Any], exc: BaseException | str, source: str) -> None:
        now = datetime.now(UTC)
        entry = {
            "at": now.isoformat(),
            "error": exc if isinstance(exc, str) else describe(exc),
            "source": source,
            **entry,
        }
        try:
            line = orjson.dumps(entry)
        except TypeError:  # e.g. lone surrogates: the stdlib escapes them
            line = json.dumps(entry, ensure_ascii=True, default=str).encode()
        path = self.directory / f"request_log-{now:%Y%m%d}.jsonl"
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            with path.open("ab") as f:
                f.write(line + b"\n")
        except OSError as write_error:
            log.error(
                "request log: could not quarantine a row to %s (%s): %s", path, write_error, line[:2000]
            )
            return
        self.count += 1
        log.error("request log: a row was refused (%s) and quarantined to %s", entry["error"], path)


@dataclass(slots=True)
class WriteResult:
    """What ``write_rows`` did. ``unwritten`` (the rows from the first that failed because of the
    database, in order) is empty unless ``database_error`` is set."""

    written: int = 0
    quarantined: int = 0
    unwritten: list[Row] = field(default_factory=list)
    database_error: BaseException | None = None


async def write_rows(
    sessionmaker: async_sessionmaker[AsyncSession],
    rows: Sequence[Row],
    quarantine: Quarantine,
    *,
    batch_size: int = 5000,
    on_flushed: SpendCallback | None = None,
    source: str = "writer",
) -> WriteResult:
    """Writes ``rows`` in one transaction (``repo.write_request_batch`` per ``batch_size`` rows); when that
    fails because of the rows, one transaction per row, quarantining each row that still fails. Stops at
    a database failure (see ``WriteResult``). ``on_flushed`` gets each commit's spend."""
    result = WriteResult()
    try:
        flushed: dict[str, tuple[float, float]] = {}
        async with sessionmaker.begin() as session:
            for i in range(0, len(rows), batch_size):
                _merge(flushed, await repo.write_request_batch(session, rows[i : i + batch_size]))
    except Exception as exc:
        if blame(exc) == "database":
            result.unwritten = list(rows)
            result.database_error = exc
            return result
        log.warning(
            "request log: a batch of %d rows failed (%s); writing them one by one", len(rows), describe(exc)
        )
    else:
        result.written = len(rows)
        _report(on_flushed, flushed)
        return result
    for i, row in enumerate(rows):
        try:
            async with sessionmaker.begin() as session:
                flushed = await repo.write_request_batch(session, [row])
        except Exception as exc:
            if blame(exc) == "database":
                result.unwritten = list(rows[i:])
                result.database_error = exc
                return result
            quarantine.add(row, exc, source=source)
            result.quarantined += 1
            continue
        result.written += 1
        _report(on_flushed, flushed)
    return result


def _merge(into: dict[str, tuple[float, float]], more: Mapping[str, tuple[float, float]]) -> None:
    for key_id, (added, total) in more.items():
        into[key_id] = (into.get(key_id, (0.0, 0.0))[0] + added, total)


def _report(on_flushed: SpendCallback | None, flushed: Mapping[str, tuple[float, float]]) -> None:
    if on_flushed is not None and flushed:
        try:
            on_flushed(flushed)
        except Exception:
            log.exception("request log: the on_flushed callback failed")


# ---- spill files --------------------------------------------------------------------------------


def write_spill(directory: Path, rows: Sequence[Row]) -> list[Path]:
    """Writes ``rows`` to new spill files (at most ``SPILL_FILE_ROWS`` each, each written atomically and
    fsynced). Blocking: run it in a thread. Raises OSError; a file written before the error is kept."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for start in range(0, len(rows), SPILL_FILE_ROWS):
        path = directory / f"request_log-{time.time_ns()}-{os.getpid()}-{uuid.uuid4().hex[:8]}.jsonl"
        tmp = path.with_suffix(".tmp")
        with tmp.open("wb") as f:
            f.write(b"".join(_dump(row) + b"\n" for row in rows[start : start + SPILL_FILE_ROWS]))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        paths.append(path)
    return paths


def _dump(row: Mapping[str, Any]) -> bytes:
    try:
        return orjson.dumps(row)
    except TypeError:
        return json.dumps(row, ensure_ascii=True, default=str).encode()


def spill_files(directory: Path) -> list[Path]:
    """The spill files waiting under ``directory``, oldest first. Reads only."""
    return sorted(directory.glob(SPILL_GLOB)) if directory.is_dir() else []


@dataclass(slots=True)
class ReplayReport:
    """What ``replay_spill`` did: files loaded (and deleted), rows written, rows and lines quarantined,
    and the files it could not read, with why (moved to the quarantine folder when possible)."""

    files: int = 0
    rows: int = 0
    quarantined: int = 0
    bad_files: list[tuple[str, str]] = field(default_factory=list)
    database_error: str | None = None


async def replay_file(
    sessionmaker: async_sessionmaker[AsyncSession],
    path: Path,
    quarantine: Quarantine,
    report: ReplayReport,
    *,
    on_flushed: SpendCallback | None = None,
) -> bool:
    """Replays one spill file: claims it (renamed to ``*.replaying``, so two replayers never load it
    twice), cleans every row (``clean_row``), quarantines lines that are not rows, writes the rest with
    ``write_rows`` and deletes the file. False when the database failed (the file is put back, untouched);
    True otherwise, a file that could not be read included (it is moved to the quarantine, reported)."""
    claimed = path.with_name(path.name + CLAIMED_SUFFIX)
    try:
        os.replace(path, claimed)
    except FileNotFoundError:
        return True  # another replayer took it
    try:
        data = await asyncio.to_thread(claimed.read_bytes)
    except OSError as exc:
        _set_aside(claimed, quarantine, report, exc)
        return True
    rows: list[Row] = []
    bad_lines = 0
    for n, line in enumerate(data.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            quarantine.add_raw(line, exc, source=f"{path.name}:{n}")
            bad_lines += 1
            continue
        if not isinstance(row, dict):
            quarantine.add_raw(line, "not a JSON object", source=f"{path.name}:{n}")
            bad_lines += 1
            continue
        rows.append(clean_row(row))
    result = await write_rows(sessionmaker, rows, quarantine, on_flushed=on_flushed, source=path.name)
    report.rows += result.written
    report.quarantined += result.quarantined + bad_lines
    if result.database_error is not None:
        report.database_error = describe(result.database_error)
        if result.written or result.quarantined or bad_lines:  # keep only what is still unwritten
            await asyncio.to_thread(write_spill, path.parent, result.unwritten)
            claimed.unlink()
        else:
            os.replace(claimed, path)
        return False
    claimed.unlink()
    report.files += 1
    log.info("request log: replayed %d rows from %s", result.written, path)
    return True


def _set_aside(claimed: Path, quarantine: Quarantine, report: ReplayReport, exc: BaseException) -> None:
    name = claimed.name.removesuffix(CLAIMED_SUFFIX)
    report.bad_files.append((name, describe(exc)))
    try:
        quarantine.directory.mkdir(parents=True, exist_ok=True)
        os.replace(claimed, quarantine.directory / f"unreadable-{name}")
    except OSError:
        pass
    log.error("request log: spill file %s could not be read (%s); set aside", name, describe(exc))


async def replay_spill(
    sessionmaker: async_sessionmaker[AsyncSession],
    spill_dir: Path,
    quarantine_dir: Path,
    *,
    on_flushed: SpendCallback | None = None,
) -> ReplayReport:
    """Loads every spill file under ``spill_dir`` back into the request log (and the keys' spend), oldest
    first, with ``replay_file``. Stops only when the database fails (``database_error`` set; the files
    not loaded stay in place); bad files and lines are quarantined under ``quarantine_dir`` and reported."""
    quarantine = Quarantine(quarantine_dir)
    report = ReplayReport()
    for path in spill_files(spill_dir):
        if not await replay_file(sessionmaker, path, quarantine, report, on_flushed=on_flushed):
            break
    return report
