from __future__ import annotations

from pathlib import Path

import pytest

from gateway.settings import (
    ProviderSettings,
    Settings,
    SettingsError,
    load_settings,
)


@pytest.fixture(autouse=True)
def _empty_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test runs in an empty folder, so no ./thriftgate.yaml is found by accident."""
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    return work


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults() -> None:
    s = load_settings(env={})
    assert (s.host, s.port, s.database_url) == ("127.0.0.1", 8080, "sqlite+aiosqlite:///./data/thriftgate.db")
    assert s.config_path is None
    assert s.virtual_key_required is False
    assert set(s.providers) == {"openai", "anthropic", "local"}
    assert s.providers["openai"].kind == "openai"
    assert s.providers["openai"].base_url == "https://api.openai.com/v1"
    assert s.providers["openai"].api_key_env == "OPENAI_API_KEY"
    assert s.providers["anthropic"].base_url == "https://api.anthropic.com"
    assert s.providers["anthropic"].api_key_env == "ANTHROPIC_API_KEY"
    assert s.providers["local"].base_url is None
    for alias in ("gpt-4o", "gpt-4o-mini", "o4-mini", "gpt-5", "text-embedding-3-small", "claude-sonnet-4-5"):
        assert s.models[alias].model == alias
    assert s.models["claude-haiku-4-5"].provider == "anthropic"
    local = s.models["thriftgate-local"]
    assert (local.provider, local.model) == ("local", "smollm2-135m-instruct")
    assert local.prices is not None and (local.prices.input, local.prices.output) == (0, 0)


def test_settings_constructor_does_not_read_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("THRIFTGATE_PORT", "1234")
    assert Settings().port == 8080
    assert load_settings().port == 1234  # load_settings reads os.environ by default


def test_env_mapping_fully_replaces_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("THRIFTGATE_PORT", "1234")
    assert load_settings(env={}).port == 8080
    assert load_settings(env={"THRIFTGATE_PORT": "9000"}).port == 9000


def test_environment_overrides() -> None:
    s = load_settings(
        env={
            "THRIFTGATE_PORT": "9000",
            "THRIFTGATE_DATABASE_URL": "postgresql+asyncpg://postgres@127.0.0.1/tg",
            "THRIFTGATE_MASTER_KEY": "sk-master",
            "THRIFTGATE_LOG_JSON": "false",
            "THRIFTGATE_PROVIDERS__OPENAI__BASE_URL": "http://127.0.0.1:9999/v1",
            "THRIFTGATE_PROVIDERS__OPENAI__HEADERS": '{"x-team": "a"}',
            "THRIFTGATE_MODELS__GPT-4O__PRICES__INPUT": "2.0",
            "thriftgate_log_level": "DEBUG",
            "THRIFTGATE_CONFIG_PATH": "/ignored",
            "THRIFTGATE_SOMETHING_ELSE": "ignored",
            "OTHER": "ignored",
        }
    )
    assert s.port == 9000
    assert s.database_url == "postgresql+asyncpg://postgres@127.0.0.1/tg"
    assert s.master_key is not None and s.master_key.get_secret_value() == "sk-master"
    assert s.virtual_key_required is True
    assert s.log_json is False
    assert s.log_level == "DEBUG"
    assert s.config_path is None
    openai = s.providers["openai"]
    assert (openai.kind, openai.base_url, openai.api_key_env) == (
        "openai",
        "http://127.0.0.1:9999/v1",
        "OPENAI_API_KEY",
    )
    assert openai.headers == {"x-team": "a"}
    gpt4o = s.models["gpt-4o"]
    assert (gpt4o.provider, gpt4o.model) == ("openai", "gpt-4o")
    assert gpt4o.prices is not None and (gpt4o.prices.input, gpt4o.prices.output) == (2.0, None)


def test_require_virtual_key_overrides_the_master_key_rule() -> None:
    assert load_settings(env={"THRIFTGATE_REQUIRE_VIRTUAL_KEY": "true"}).virtual_key_required is True
    s = load_settings(env={"THRIFTGATE_MASTER_KEY": "m", "THRIFTGATE_REQUIRE_VIRTUAL_KEY": "false"})
    assert s.virtual_key_required is False


def test_yaml_then_environment_precedence(tmp_path: Path) -> None:
    path = _write(tmp_path / "tg.yaml", "port: 9001\nhost: 0.0.0.0\n")
    s = load_settings(path, env={})
    assert (s.port, s.host, s.config_path) == (9001, "0.0.0.0", str(path.resolve()))
    s = load_settings(path, env={"THRIFTGATE_PORT": "9002"})
    assert (s.port, s.host) == (9002, "0.0.0.0")


def test_yaml_found_through_env_then_cwd(tmp_path: Path, _empty_cwd: Path) -> None:
    named = _write(tmp_path / "named.yaml", "port: 7001\n")
    _write(_empty_cwd / "thriftgate.yaml", "port: 7002\n")
    assert load_settings(env={"THRIFTGATE_CONFIG": str(named)}).port == 7001
    s = load_settings(env={})
    assert s.port == 7002
    assert s.config_path == str((_empty_cwd / "thriftgate.yaml").resolve())


def test_missing_named_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="does not exist"):
        load_settings(tmp_path / "missing.yaml", env={})
    with pytest.raises(SettingsError, match=r"missing2\.yaml"):
        load_settings(env={"THRIFTGATE_CONFIG": str(tmp_path / "missing2.yaml")})


def test_yaml_models_and_providers_merge_over_defaults(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "tg.yaml",
        """
providers:
  openai:
    base_url: http://127.0.0.1:8001/v1
  vllm:
    kind: openai_compatible
    base_url: http://127.0.0.1:8000/v1
models:
  llama: {provider: vllm, model: meta-llama/Llama-3.1-8B-Instruct, prices: {input: 0.05, output: 0.08}}
  gpt-4o: {prices: {input: 2.0}}
  o3: null
""",
    )
    s = load_settings(path, env={})
    assert set(s.providers) == {"openai", "anthropic", "local", "vllm"}
    assert s.providers["openai"].base_url == "http://127.0.0.1:8001/v1"
    assert s.providers["openai"].api_key_env == "OPENAI_API_KEY"
    assert s.models["llama"].model == "meta-llama/Llama-3.1-8B-Instruct"
    assert s.models["gpt-4o"].model == "gpt-4o"
    assert s.models["gpt-4o"].prices is not None and s.models["gpt-4o"].prices.input == 2.0
    assert "o3" not in s.models
    assert "gpt-4o-mini" in s.models and "claude-sonnet-4-5" in s.models


def test_replace_default_models(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "tg.yaml",
        "replace_default_models: true\nmodels:\n  fast: {provider: openai, model: gpt-4o-mini}\n",
    )
    s = load_settings(path, env={})
    assert list(s.models) == ["fast"]
    assert set(s.providers) == {"openai", "anthropic", "local"}


def test_replace_flags_must_be_booleans(tmp_path: Path) -> None:
    path = _write(tmp_path / "tg.yaml", "replace_default_models: 'no'\n")
    with pytest.raises(SettingsError, match="replace_default_models: must be true or false"):
        load_settings(path, env={})


def test_replace_default_providers_requires_models_to_follow(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "tg.yaml",
        "replace_default_providers: true\nproviders:\n  openai: {kind: openai}\n",
    )
    with pytest.raises(SettingsError, match="uses provider 'anthropic', which is not configured"):
        load_settings(path, env={})


def test_env_keys_match_existing_keys_case_insensitively(tmp_path: Path) -> None:
    path = _write(tmp_path / "tg.yaml", "models:\n  MyModel: {provider: openai, model: gpt-4o}\n")
    s = load_settings(path, env={"THRIFTGATE_MODELS__MYMODEL__MODEL": "gpt-4o-mini"})
    assert s.models["MyModel"].model == "gpt-4o-mini"
    assert "mymodel" not in s.models


def test_model_with_unconfigured_provider_names_model_provider_and_file(tmp_path: Path) -> None:
    path = _write(tmp_path / "tg.yaml", "models:\n  mine: {provider: nowhere, model: x}\n")
    with pytest.raises(SettingsError) as info:
        load_settings(path, env={})
    message = str(info.value)
    assert "'mine'" in message and "'nowhere'" in message and str(path.resolve()) in message


def test_invalid_field_names_field_and_file(tmp_path: Path) -> None:
    path = _write(tmp_path / "tg.yaml", "port: eighty\n")
    with pytest.raises(SettingsError) as info:
        load_settings(path, env={})
    assert "port" in str(info.value) and str(path.resolve()) in str(info.value)


def test_invalid_env_value_names_the_variable() -> None:
    with pytest.raises(SettingsError, match="THRIFTGATE_PROVIDERS__OPENAI__TIMEOUT_S"):
        load_settings(env={"THRIFTGATE_PROVIDERS__OPENAI__TIMEOUT_S": "soon"})


def test_unknown_keys_are_errors(tmp_path: Path) -> None:
    path = _write(tmp_path / "tg.yaml", "prot: 9000\n")
    with pytest.raises(SettingsError, match="prot"):
        load_settings(path, env={})
    path = _write(tmp_path / "tg2.yaml", "models:\n  gpt-4o: {price: {input: 1}}\n")
    with pytest.raises(SettingsError, match=r"models\.gpt-4o\.price"):
        load_settings(path, env={})


def test_openai_compatible_requires_base_url(tmp_path: Path) -> None:
    path = _write(tmp_path / "tg.yaml", "providers:\n  vllm: {kind: openai_compatible}\n")
    with pytest.raises(SettingsError, match=r"providers\.vllm.*base_url is required"):
        load_settings(path, env={})


def test_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="not valid YAML"):
        load_settings(_write(tmp_path / "a.yaml", "port: [9000\n"), env={})
    with pytest.raises(SettingsError, match="must be a mapping"):
        load_settings(_write(tmp_path / "b.yaml", "- 1\n- 2\n"), env={})
    assert load_settings(_write(tmp_path / "c.yaml", "# nothing\n"), env={}).port == 8080


def test_resolved_api_key() -> None:
    env = {"OPENAI_API_KEY": "sk-env", "EMPTY": ""}
    assert ProviderSettings(kind="openai", api_key_env="OPENAI_API_KEY").resolved_api_key(env) == "sk-env"
    explicit = ProviderSettings(kind="openai", api_key="sk-explicit", api_key_env="OPENAI_API_KEY")  # type: ignore[arg-type]
    assert explicit.resolved_api_key(env) == "sk-explicit"
    assert ProviderSettings(kind="openai", api_key_env="EMPTY").resolved_api_key(env) is None
    assert ProviderSettings(kind="openai", api_key_env="UNSET").resolved_api_key(env) is None
    assert ProviderSettings(kind="local").resolved_api_key(env) is None


def test_provider_key_from_environment_stays_secret() -> None:
    s = load_settings(env={"THRIFTGATE_PROVIDERS__ANTHROPIC__API_KEY": "sk-ant-secret"})
    anthropic = s.providers["anthropic"]
    assert anthropic.resolved_api_key({}) == "sk-ant-secret"
    assert "sk-ant-secret" not in repr(s)
    assert "sk-ant-secret" not in s.model_dump_json()


def test_data_dir_names_every_file_location(tmp_path: Path) -> None:
    default = Settings()
    assert default.data_dir == "./data"
    assert default.database_url == "sqlite+aiosqlite:///./data/thriftgate.db"
    assert default.local_model_dir == "./data/models"
    assert default.spill_dir.parent == Path("data/spill") and default.quarantine_dir == Path(
        "data/quarantine"
    )

    config = tmp_path / "tg.yaml"
    config.write_text("data_dir: /srv/tg\ndatabase_url: null\nlocal_model_dir: null\n")
    s = load_settings(config, env={})
    assert s.database_url == "sqlite+aiosqlite:////srv/tg/thriftgate.db"
    assert s.local_model_dir == "/srv/tg/models"
    assert (s.spill_dir.parent, s.quarantine_dir) == (Path("/srv/tg/spill"), Path("/srv/tg/quarantine"))

    from_env = load_settings(env={"THRIFTGATE_DATA_DIR": "var/tg"})
    assert from_env.database_url == "sqlite+aiosqlite:///var/tg/thriftgate.db"
    assert from_env.spill_dir.parent == Path("var/tg/spill")


def test_explicit_database_url_and_model_dir_win_over_data_dir() -> None:
    s = load_settings(
        env={
            "THRIFTGATE_DATA_DIR": "/srv/tg",
            "THRIFTGATE_DATABASE_URL": "postgresql://u@db/tg",
            "THRIFTGATE_LOCAL_MODEL_DIR": "/models",
        }
    )
    assert s.database_url == "postgresql://u@db/tg" and s.local_model_dir == "/models"
    assert s.spill_dir.parent == Path("/srv/tg/spill")  # the spill and quarantine always follow data_dir


def test_each_database_spills_to_its_own_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows spilled for one database are never replayed into another from the same data directory."""
    monkeypatch.chdir(tmp_path)
    a = load_settings(env={"THRIFTGATE_DATABASE_URL": "sqlite:///./a.db"})
    b = load_settings(env={"THRIFTGATE_DATABASE_URL": "sqlite:///./b.db"})
    assert a.spill_dir.parent == b.spill_dir.parent and a.spill_dir != b.spill_dir
    # the same file, named relatively or absolutely, with or without the driver: one folder
    same = load_settings(env={"THRIFTGATE_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'a.db'}"})
    assert same.spill_dir == a.spill_dir and a.spill_dir.name.startswith("sqlite-")
    pg = load_settings(env={"THRIFTGATE_DATABASE_URL": "postgresql://u:secret@db:5432/tg"})
    pg_other_password = load_settings(
        env={"THRIFTGATE_DATABASE_URL": "postgresql+asyncpg://u:other@db:5432/tg"}
    )
    pg_other_db = load_settings(env={"THRIFTGATE_DATABASE_URL": "postgresql://u@db:5432/tg2"})
    assert pg.spill_dir == pg_other_password.spill_dir != pg_other_db.spill_dir
    assert "secret" not in str(pg.spill_dir) and pg.spill_dir.name.startswith("postgresql-")


def test_log_writer_settings() -> None:
    s = load_settings(
        env={"THRIFTGATE_LOG_WRITER__MAX_PENDING": "5", "THRIFTGATE_LOG_WRITER__REPLAY_SPILL": "false"}
    )
    assert s.log_writer.max_pending == 5 and s.log_writer.replay_spill is False
    assert s.log_writer.unhealthy_after_failures == 3 and s.log_writer.behind_after_s == 30.0
    with pytest.raises(SettingsError, match=r"log_writer\.max_pending"):
        load_settings(env={"THRIFTGATE_LOG_WRITER__MAX_PENDING": "0"})
