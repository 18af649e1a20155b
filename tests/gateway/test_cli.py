from __future__ import annotations

import asyncio
import json
from pathlib import Path

import orjson
import pytest

from gateway.cli import is_loopback, main
from gateway.errors import AuthenticationFailed
from gateway.keys import KeyStore
from gateway.settings import database_tag, sqlite_url
from gateway.spill import write_spill
from gateway.storage import head_revision, make_engine, make_sessionmaker, repo
from gateway.types import RequestRecord, Usage


@pytest.fixture
def db_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.chdir(tmp_path)  # no ./thriftgate.yaml, and ./data lands in tmp_path
    url = f"sqlite+aiosqlite:///{tmp_path / 'cli' / 'tg.db'}"
    monkeypatch.setenv("THRIFTGATE_DATABASE_URL", url)
    return url


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def fresh_store_authenticate(url: str, raw: str) -> str:
    async def go() -> str:
        engine = make_engine(url)
        try:
            store = KeyStore(make_sessionmaker(engine))
            await store.start()
            await store.stop()
            return store.authenticate(raw).id
        finally:
            await engine.dispose()

    return asyncio.run(go())


def test_db_upgrade_current_downgrade(db_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "db", "current")[1].startswith("none")
    head = head_revision()
    status, out, _ = run(capsys, "db", "upgrade")
    assert status == 0 and out.strip() == f"database at revision {head}"
    assert run(capsys, "db", "current")[1].strip() == f"{head} (head)"
    assert run(capsys, "db", "downgrade", "base")[0] == 0
    assert run(capsys, "db", "current")[1].startswith("none")


def test_keys_create_list_revoke(db_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run(
        capsys,
        "keys",
        "create",
        "--name",
        "team-a",
        "--budget-usd",
        "5",
        "--rpm",
        "60",
        "--models",
        "gpt-4o, o3",
    )
    assert status == 0, err
    lines = out.splitlines()
    key_id = lines[0].split()[1]
    raw = lines[1]
    assert raw.startswith("tg-") and "only once" in err
    assert fresh_store_authenticate(db_url, raw) == key_id

    status, out, _ = run(capsys, "keys", "list")
    assert status == 0 and key_id in out and "team-a" in out and "gpt-4o,o3" in out and "active" in out
    assert raw[3:] not in out

    status, out, _ = run(capsys, "keys", "list", "--json")
    listed = json.loads(out)
    assert [k["id"] for k in listed] == [key_id] and listed[0]["budget_usd"] == 5.0 and "key" not in listed[0]

    assert run(capsys, "keys", "revoke", key_id)[:2] == (0, f"revoked {key_id}\n")
    with pytest.raises(AuthenticationFailed):
        fresh_store_authenticate(db_url, raw)
    assert json.loads(run(capsys, "keys", "list", "--json")[1])[0]["revoked"] is True
    status, _, err = run(capsys, "keys", "revoke", "key_000000000000")
    assert status == 1 and "no key" in err


def test_keys_create_json_and_bad_values(db_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(capsys, "keys", "create", "--name", "x", "--json")
    created = json.loads(out)
    assert status == 0 and created["key"].startswith("tg-") and created["models"] is None
    status, _, err = run(capsys, "keys", "create", "--name", "y", "--rpm", "0")
    assert status == 2 and "rpm" in err


def test_serve_refuses_public_host_without_master_key(
    db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, _, err = run(capsys, "serve", "--host", "0.0.0.0", "--port", "0")
    assert status == 2 and "master key" in err
    assert not (tmp_path / "cli").exists()  # refused before touching the database


def test_is_loopback() -> None:
    assert (
        is_loopback("127.0.0.1")
        and is_loopback("localhost")
        and is_loopback("::1")
        and is_loopback("127.8.0.1")
    )
    assert not is_loopback("0.0.0.0") and not is_loopback("::") and not is_loopback("10.0.0.5")
    assert not is_loopback("gateway.internal")


def test_bad_config_is_a_usage_error(
    db_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("THRIFTGATE_CONFIG", "/nonexistent/thriftgate.yaml")
    status, _, err = run(capsys, "db", "current")
    assert status == 2 and "does not exist" in err


def test_replay_spill(db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spill = tmp_path / "spill"
    spill.mkdir()
    rows = [
        repo.request_row(
            RequestRecord(
                request_id=f"req_{i}",
                surface="openai.chat",
                method="POST",
                path="/v1/chat/completions",
                usage=Usage(input_tokens=3),
                created_at=1_700_000_000.0,
            )
        )
        for i in range(3)
    ]
    (spill / "request_log-1-1-0.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    status, out, _ = run(capsys, "db", "replay-spill", "--dir", str(spill))
    assert status == 0 and out.strip() == f"replayed 3 rows from 1 spill files in {spill}"
    assert list(spill.iterdir()) == []
    assert (
        run(capsys, "db", "replay-spill", "--dir", str(spill))[1].strip()
        == f"replayed 0 rows from 0 spill files in {spill}"
    )


def test_init_writes_config(db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "conf" / "thriftgate.yaml"
    assert run(capsys, "init", "--path", str(target))[0] == 0
    assert target.is_file() and target.read_text()
    status, _, err = run(capsys, "init", "--path", str(target))
    assert status == 1 and "--force" in err
    assert run(capsys, "init", "--path", str(target), "--force")[0] == 0


def test_no_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert main(["keys"]) == 2


def test_data_dir_holds_the_database_and_the_spill(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "state"
    monkeypatch.setenv("THRIFTGATE_DATA_DIR", str(data))
    assert run(capsys, "db", "upgrade")[0] == 0
    assert (data / "thriftgate.db").is_file() and not (tmp_path / "data").exists()
    spill = data / "spill" / database_tag(sqlite_url(data / "thriftgate.db"))  # this database's folder
    write_spill(spill, [repo.request_row(RequestRecord("req_1", "openai.chat", "POST", "/v1/x"))])
    (spill / "request_log-9-9-9.jsonl").write_bytes(b"{broken\n")
    write_spill(
        data / "spill" / "sqlite-0123456789ab", [repo.request_row(RequestRecord("req_2", "x", "POST", "/"))]
    )
    status, out, _ = run(capsys, "db", "replay-spill")
    assert status == 0
    assert out.splitlines() == [
        f"replayed 1 rows from 2 spill files in {spill}",
        f"1 rows or lines were refused and quarantined to {data / 'quarantine'}",
    ]
    assert list((data / "quarantine").glob("request_log-*.jsonl"))
    assert not (tmp_path / "data").exists()


def test_local_build_writes_under_data_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``local build`` without --out writes to local_model_dir, which follows data_dir. A current build
    is placed there first, so the command finds it instead of converting for minutes."""
    convert = pytest.importorskip("local_engine.convert")
    try:
        source = convert.default_source()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "state"
    monkeypatch.setenv("THRIFTGATE_DATA_DIR", str(data))
    model_dir = convert.model_dir_for(data / "models")
    (model_dir / "fp32").mkdir(parents=True)
    (model_dir / "fp32" / "model.onnx").write_bytes(b"")
    (model_dir / "tokenizer.json").write_text("{}")
    manifest = {
        "complete": True,
        "converter_version": convert.CONVERTER_VERSION,
        "source": {"sha256": convert.file_sha256(source)},
        "variants": {"fp32": {"file": "fp32/model.onnx"}},
    }
    (model_dir / "manifest.json").write_text(json.dumps(manifest))
    status, out, _ = run(capsys, "local", "build")
    assert status == 0 and out.strip() == str(model_dir / "manifest.json")
    assert not (tmp_path / "data").exists()


def test_replay_spill_keeps_the_files_when_the_database_fails(
    db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import sqlite3

    assert run(capsys, "db", "upgrade")[0] == 0
    spill = tmp_path / "spill"
    write_spill(spill, [repo.request_row(RequestRecord("req_1", "openai.chat", "POST", "/v1/x"))])
    [path] = list(spill.iterdir())
    with sqlite3.connect(tmp_path / "cli" / "tg.db") as conn:
        conn.execute("ALTER TABLE request_log RENAME TO request_log_away")
    status, _, err = run(capsys, "db", "replay-spill", "--dir", str(spill))
    assert status == 1 and "the database failed" in err and "no such table" in err
    assert list(spill.iterdir()) == [path]  # untouched, for the next try
