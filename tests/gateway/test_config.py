from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from gateway.config import Catalogue, render_default_config, write_default_config
from gateway.errors import ModelNotFound
from gateway.settings import Settings, load_settings
from gateway.types import ModelPrices, ModelRoute

GPT_4O = ModelPrices(input=2.5, output=10.0, cache_read=1.25, cache_write_5m=2.5, cache_write_1h=2.5)
SONNET_4_5 = ModelPrices(input=3.0, output=15.0, cache_read=0.3, cache_write_5m=3.75, cache_write_1h=6.0)
ZERO = ModelPrices(input=0.0, output=0.0, cache_read=0.0, cache_write_5m=0.0, cache_write_1h=0.0)


@pytest.fixture(autouse=True)
def _empty_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)


def _catalogue(tmp_path: Path, yaml_text: str) -> Catalogue:
    path = tmp_path / "tg.yaml"
    path.write_text(yaml_text, encoding="utf-8")
    return Catalogue(load_settings(path, env={}))


def test_every_default_model_is_priced() -> None:
    catalogue = Catalogue(load_settings(env={}))
    unpriced = [
        route.alias for route in catalogue.routes() if route.prices is None or route.prices.input is None
    ]
    assert unpriced == []
    assert catalogue.resolve("thriftgate-local").prices == ZERO


def test_resolve_alias() -> None:
    catalogue = Catalogue(Settings())
    assert catalogue.resolve("gpt-4o") == ModelRoute("gpt-4o", "openai", "openai", "gpt-4o", GPT_4O)
    route = catalogue.resolve("claude-sonnet-4-5-20250929")
    assert (route.provider, route.provider_kind, route.prices) == ("anthropic", "anthropic", SONNET_4_5)
    assert catalogue.resolve("thriftgate-local").provider_kind == "local"


def test_resolve_provider_slash_model_outside_the_catalogue() -> None:
    catalogue = Catalogue(Settings())
    route = catalogue.resolve("openai/gpt-4o-2024-08-06")
    assert route == ModelRoute("openai/gpt-4o-2024-08-06", "openai", "openai", "gpt-4o-2024-08-06", GPT_4O)
    unknown = catalogue.resolve("anthropic/claude-from-the-future")
    assert (unknown.upstream_model, unknown.prices) == ("claude-from-the-future", None)


@pytest.mark.parametrize("name", ["no-such-model", "nowhere/gpt-4o", "openai/", ""])
def test_unknown_model_raises_model_not_found(name: str) -> None:
    with pytest.raises(ModelNotFound) as info:
        Catalogue(Settings()).resolve(name)
    assert repr(name) in info.value.message
    assert info.value.status_code == 404


def test_aliases_and_routes_follow_configuration_order(tmp_path: Path) -> None:
    catalogue = _catalogue(
        tmp_path,
        "replace_default_models: true\nmodels:\n  b: {provider: openai, model: gpt-4o}\n"
        "  a: {provider: anthropic, model: claude-sonnet-4-5}\n",
    )
    assert catalogue.aliases() == ["b", "a"]
    assert [route.upstream_model for route in catalogue.routes()] == ["gpt-4o", "claude-sonnet-4-5"]


def test_override_fields_win_per_field(tmp_path: Path) -> None:
    catalogue = _catalogue(
        tmp_path,
        "models:\n  gpt-4o: {prices: {input: 2.0, cache_write_5m: 0.5}}\n"
        "  gpt-4o-mini: {prices: {input: 0.2}}\n"
        "  claude-sonnet-4-5: {prices: {input: 4.0}}\n",
    )
    # listed cache_read 1.25 kept; the 1h write follows the 5m write
    assert catalogue.resolve("gpt-4o").prices == ModelPrices(2.0, 10.0, 1.25, 0.5, 0.5)
    # an unlisted (derived) write price follows the overridden input price
    assert catalogue.resolve("gpt-4o-mini").prices == ModelPrices(0.2, 0.6, 0.075, 0.2, 0.2)
    # listed Anthropic write prices stay as listed
    assert catalogue.resolve("claude-sonnet-4-5").prices == ModelPrices(4.0, 15.0, 0.3, 3.75, 6.0)


def test_anthropic_override_only_model_derives_writes(tmp_path: Path) -> None:
    catalogue = _catalogue(
        tmp_path,
        "models:\n  future: {provider: anthropic, model: claude-next, prices: {input: 2.0, output: 10.0}}\n",
    )
    # read = input 2, 5m write = 1.25 × 2 = 2.5, 1h write = 2 × 2 = 4
    assert catalogue.resolve("future").prices == ModelPrices(2.0, 10.0, 2.0, 2.5, 4.0)


def test_price_id_names_the_price_when_the_model_id_differs(tmp_path: Path) -> None:
    catalogue = _catalogue(
        tmp_path,
        "models:\n  sonnet: {provider: anthropic, model: my-sonnet-deployment, price_id: claude-sonnet-4-5}\n"
        "  mystery: {provider: anthropic, model: my-sonnet-deployment}\n",
    )
    assert catalogue.resolve("sonnet").prices == SONNET_4_5
    assert catalogue.resolve("sonnet").upstream_model == "my-sonnet-deployment"
    assert catalogue.resolve("mystery").prices is None


def test_openai_compatible_models(tmp_path: Path) -> None:
    catalogue = _catalogue(
        tmp_path,
        """
providers:
  vllm: {kind: openai_compatible, base_url: "http://127.0.0.1:8000/v1"}
models:
  llama: {provider: vllm, model: meta-llama/Llama-3.1-8B-Instruct, prices: {input: 0.05, output: 0.08}}
  unpriced: {provider: vllm, model: meta-llama/Llama-3.1-8B-Instruct}
  groq-priced: {provider: vllm, model: llama-3.3-70b-versatile, price_id: groq/llama-3.3-70b-versatile}
""",
    )
    llama = catalogue.resolve("llama")
    assert (llama.provider_kind, llama.prices) == (
        "openai_compatible",
        ModelPrices(0.05, 0.08, 0.05, 0.05, 0.05),
    )
    assert catalogue.resolve("unpriced").prices is None
    assert catalogue.resolve("groq-priced").prices == ModelPrices(0.59, 0.79, 0.59, 0.59, 0.59)
    assert catalogue.resolve("vllm/qwen2.5-7b").prices is None


def test_local_models_are_free_unless_priced(tmp_path: Path) -> None:
    catalogue = _catalogue(
        tmp_path,
        "models:\n  tiny: {provider: local, model: other-model}\n"
        "  dear: {provider: local, model: other-model, prices: {output: 1.0}}\n",
    )
    assert catalogue.resolve("tiny").prices == ZERO
    assert catalogue.resolve("dear").prices == ModelPrices(0.0, 1.0, 0.0, 0.0, 0.0)


def test_rendered_default_config_loads_back_to_the_defaults(tmp_path: Path) -> None:
    text = render_default_config()
    assert yaml.safe_load(text)  # valid YAML
    path = tmp_path / "thriftgate.yaml"
    path.write_text(text, encoding="utf-8")
    loaded = load_settings(path, env={})
    defaults = load_settings(env={})
    assert loaded.model_dump(exclude={"config_path"}) == defaults.model_dump(exclude={"config_path"})
    assert defaults == Settings()
    # every setting is in the file, not merely defaulted
    assert set(yaml.safe_load(text)) == set(Settings.model_fields) - {"config_path"}
    assert list(yaml.safe_load(text)["models"]) == list(defaults.models)


def test_rendered_examples_work_when_uncommented(tmp_path: Path) -> None:
    text = render_default_config()
    assert "kind: openai_compatible" in text
    uncommented = []
    for line in text.splitlines():
        stripped = line.lstrip()
        indent = line[: len(line) - len(stripped)]
        body = stripped[2:]
        # example blocks are the commented lines indented under providers/models that hold YAML keys
        if (indent == "  " and stripped.startswith("# ") and body.split(" ")[0].endswith(":")) or (
            indent == "  " and stripped.startswith("#   ")
        ):
            uncommented.append(indent + body)
        else:
            uncommented.append(line)
    path = tmp_path / "examples.yaml"
    path.write_text("\n".join(uncommented), encoding="utf-8")
    settings = load_settings(path, env={})
    assert settings.providers["vllm"].kind == "openai_compatible"
    assert settings.providers["vllm"].base_url == "http://localhost:8000/v1"
    catalogue = Catalogue(settings)
    assert catalogue.resolve("llama-8b").prices == ModelPrices(0.05, 0.08, 0.05, 0.05, 0.05)
    assert catalogue.resolve("gpt-4o").prices == ModelPrices(2.0, 8.0, 1.25, 2.0, 2.0)


def test_write_default_config_refuses_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "thriftgate.yaml"
    assert write_default_config(path) == path
    assert path.read_text(encoding="utf-8") == render_default_config()
    path.write_text("port: 1\n", encoding="utf-8")
    with pytest.raises(FileExistsError):
        write_default_config(path)
    assert path.read_text(encoding="utf-8") == "port: 1\n"
    write_default_config(str(path), force=True)
    assert path.read_text(encoding="utf-8") == render_default_config()
