"""The LiteLLM peer's configuration and environment (no LiteLLM needed)."""

from __future__ import annotations

from pathlib import Path

import yaml

from bench.peers.litellm import EXCLUDED, MASTER_KEY, command, proxy_env, write_config


def test_config_is_the_comparable_one(tmp_path: Path) -> None:
    path = write_config(tmp_path / "c.yaml", ["gpt-4o-mini"], "http://127.0.0.1:9/v1")
    config = yaml.safe_load(path.read_text())
    (model,) = config["model_list"]
    assert model["model_name"] == "gpt-4o-mini"
    assert model["litellm_params"]["model"] == "openai/gpt-4o-mini"
    assert model["litellm_params"]["api_base"] == "http://127.0.0.1:9/v1"
    assert config["litellm_settings"]["cache"] is False
    assert config["litellm_settings"]["num_retries"] == 0
    assert config["general_settings"]["background_health_checks"] is False
    assert config["general_settings"]["master_key"] == "os.environ/LITELLM_MASTER_KEY"
    assert "database_url" not in config["general_settings"]


def test_environment_is_offline_quiet_and_keyed() -> None:
    env = proxy_env({"DATABASE_URL": "postgres://x", "OPENAI_API_KEY": "sk-real", "PATH": "/bin"})
    assert env["LITELLM_MASTER_KEY"] == MASTER_KEY
    assert env["LITELLM_LOCAL_MODEL_COST_MAP"] == "True"
    assert env["LITELLM_LOG"] == "WARNING"
    assert "DATABASE_URL" not in env and "OPENAI_API_KEY" not in env and env["PATH"] == "/bin"


def test_one_worker_and_the_unserved_packages_left_out(tmp_path: Path) -> None:
    argv = command(tmp_path / "venv", tmp_path / "c.yaml", 4000)
    assert argv[argv.index("--num_workers") + 1] == "1"
    assert {"litellm-proxy", "litellm-enterprise"} <= EXCLUDED
