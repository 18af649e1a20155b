"""The file store: a file's bytes on disk under ``batch.data_dir``, its row in ``files``. Every file belongs
to the virtual key that created it; another key finds nothing (``NotFound``)."""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
from collections.abc import AsyncIterator, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.errors import NotFound
from gateway.storage.models import FileRow

CHUNK = 64 * 1024


def _copy(source: IO[bytes], path: Path) -> None:
    with open(path, "wb") as out:
        shutil.copyfileobj(source, out, CHUNK)


def new_id(prefix: str) -> str:
    return prefix + secrets.token_hex(12)


def file_json(row: FileRow) -> dict[str, Any]:
    """OpenAI's file object."""
    return {
        "id": row.id,
        "object": "file",
        "bytes": row.bytes,
        "created_at": int(row.created_at.timestamp()),
        "filename": row.filename,
        "purpose": row.purpose,
        "status": "processed",
        "expires_at": None,
        "status_details": None,
    }


class FileStore:
    """Files on disk plus their rows. Reads and writes the data directory and the ``files`` table."""

    def __init__(self, root: str | Path, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
        self.root = Path(root).expanduser()
        self.sessionmaker = sessionmaker

    def path(self, row: FileRow) -> Path:
        return self.root / row.path

    def _new_path(self, file_id: str) -> tuple[str, Path]:
        rel = f"{file_id[-2:]}/{file_id}"
        full = self.root / rel
        full.parent.mkdir(parents=True, exist_ok=True)
        return rel, full

    async def save(self, key_id: str | None, filename: str, purpose: str, source: IO[bytes]) -> FileRow:
        """Copies ``source`` (an open binary file) into the store and records it."""
        file_id = new_id("file-")
        rel, full = self._new_path(file_id)
        await asyncio.to_thread(_copy, source, full)
        return await self._record(file_id, key_id, filename, purpose, rel, full.stat().st_size)

    async def write_lines(
        self, key_id: str | None, filename: str, purpose: str, lines: AsyncIterator[bytes]
    ) -> FileRow:
        """A file made of ``lines`` (each ends with a newline), written as they come."""
        file_id = new_id("file-")
        rel, full = self._new_path(file_id)
        with open(full, "wb") as out:  # noqa: ASYNC230 (a local file, written a line at a time)
            async for line in lines:
                out.write(line)
            out.flush()
            os.fsync(out.fileno())
        return await self._record(file_id, key_id, filename, purpose, rel, full.stat().st_size)

    async def _record(
        self, file_id: str, key_id: str | None, filename: str, purpose: str, rel: str, size: int
    ) -> FileRow:
        row = FileRow(
            id=file_id,
            key_id=key_id,
            purpose=purpose,
            filename=filename[:255] or "upload",
            bytes=size,
            path=rel,
            created_at=datetime.now(UTC),
        )
        async with self.sessionmaker() as session:
            session.add(row)
            await session.commit()
        return row

    async def get(self, file_id: str, key_id: str | None) -> FileRow:
        """The file, if ``key_id`` owns it; else ``NotFound``. Reads only."""
        async with self.sessionmaker() as session:
            row = await session.get(FileRow, file_id)
        if row is None or row.key_id != key_id:
            raise NotFound(f"No such File object: {file_id}", param="id", code="file_not_found")
        return row

    async def list(
        self, key_id: str | None, purpose: str | None = None, limit: int = 10_000
    ) -> list[FileRow]:
        async with self.sessionmaker() as session:
            query = select(FileRow).where(
                FileRow.key_id.is_(None) if key_id is None else FileRow.key_id == key_id
            )
            if purpose:
                query = query.where(FileRow.purpose == purpose)
            rows = await session.scalars(query.order_by(FileRow.created_at.desc()).limit(limit))
            return list(rows)

    async def delete(self, file_id: str, key_id: str | None) -> None:
        row = await self.get(file_id, key_id)
        async with self.sessionmaker() as session:
            await session.execute(delete(FileRow).where(FileRow.id == row.id))
            await session.commit()
        self.path(row).unlink(missing_ok=True)

    def chunks(self, row: FileRow) -> Iterable[bytes]:
        """The file's bytes, a chunk at a time (never the whole file in memory)."""
        with open(self.path(row), "rb") as f:
            while chunk := f.read(CHUNK):
                yield chunk

    def lines(self, row: FileRow) -> Iterable[tuple[int, bytes]]:
        """(1-based line number, line) for each line of the file, blank ones included."""
        with open(self.path(row), "rb") as f:
            yield from enumerate(f, 1)
