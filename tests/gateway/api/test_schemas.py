"""The OpenAPI schema documents every endpoint, with the request bodies the surfaces accept."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.routing import APIRoute
from starlette.routing import Route

from gateway.api import schemas
from gateway.app import create_app
from gateway.settings import PassthroughRoute, PassthroughSettings, Settings


def _app(**overrides: Any) -> Any:
    return create_app(Settings(**overrides), configure_logs=False)


def _flat(routes: Any) -> Any:
    """The app's routes, routers included by FastAPI (lazily, in recent versions) flattened."""
    for route in routes:
        included = getattr(route, "original_router", None)
        if included is not None:
            yield from _flat(included.routes)
        else:
            yield route


def _resolve(openapi: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    if ref is None:
        return schema
    resolved: dict[str, Any] = openapi["components"]["schemas"][ref.rsplit("/", 1)[1]]
    return resolved


def test_every_route_is_in_the_schema_and_every_body_is_described() -> None:
    app = _app()
    openapi = app.openapi()
    paths = openapi["paths"]
    undocumented = []
    documented = 0
    for route in _flat(app.routes):
        if not isinstance(route, Route) or route.path.startswith(("/openapi", "/docs")):
            continue
        if route.path == "/v1/{path:path}":
            continue  # the passthrough catch-all: documented by its allow-list (below)
        if route.path in ("/admin", "/admin/api/openapi.json") or route.path.startswith("/admin/ui/"):
            continue  # the dashboard's HTML pages and forms, and the schema itself: not an API
        assert isinstance(route, APIRoute), f"{route.path} is not an APIRoute: it has no schema"
        path = route.path_format
        for method in route.methods or ():
            if method == "HEAD":
                continue
            op = paths.get(path, {}).get(method.lower())
            if op is None:
                undocumented.append(f"{method} {path}")
                continue
            if method in ("POST", "PUT", "PATCH") and not path.endswith("/cancel"):  # cancel: no body
                [(kind, content)] = op["requestBody"]["content"].items()
                assert kind in ("application/json", "multipart/form-data"), f"{method} {path}"
                resolved = _resolve(openapi, content["schema"])
                assert resolved.get("type") == "object" and resolved.get("properties"), f"{method} {path}"
                documented += 1
    assert not undocumented
    assert documented >= 9  # chat, embeddings, responses, messages, count_tokens, files, 2 batches, admin
    for path in ("/v1/chat/completions", "/v1/messages", "/v1/messages/count_tokens", "/v1/embeddings"):
        assert "post" in paths[path]
    for section in ("/healthz", "/readyz", "/metrics", "/v1/models", "/admin/keys"):
        assert section in paths


def test_allow_listed_passthrough_routes_are_in_the_schema() -> None:
    routes = [
        PassthroughRoute(method="POST", path="/v1/completions", model="required", metering="openai_chat"),
        PassthroughRoute(method="GET", path="/v1/vector_stores", model="none", provider="openai"),
        PassthroughRoute(method="POST", path="/v1/images/generations", model="required"),
    ]
    openapi = _app(passthrough=PassthroughSettings(routes=routes)).openapi()
    paths = openapi["paths"]
    assert "requestBody" not in paths["/v1/vector_stores"]["get"]
    completions = paths["/v1/completions"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert _resolve(openapi, completions)["required"] == ["model", "prompt"]
    images = paths["/v1/images/generations"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert _resolve(openapi, images)["required"] == ["model"]
    assert "/v1/moderations" not in paths  # only what is allow-listed


def test_the_models_accept_what_the_sdks_send() -> None:
    schemas.ChatCompletionRequest.model_validate(
        {
            "model": "gpt-4o-mini",
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "hi"}]},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
                    ],
                },
                {"role": "tool", "tool_call_id": "c1", "content": "42"},
            ],
            "stream": True,
            "stream_options": {"include_usage": True},
            "some_new_field": 1,
        }
    )
    schemas.MessagesRequest.model_validate(
        {
            "model": "claude-haiku-4-5",
            "max_tokens": 16,
            "system": [{"type": "text", "text": "be brief", "cache_control": {"type": "ephemeral"}}],
            "messages": [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": "42"}]},
            ],
        }
    )


def test_the_documented_routes_serve_behind_a_root_path(sim: Any, sim_url: str, db_url: str) -> None:
    """Behind a root path the hot-route dispatcher steps aside and the router's APIRoutes (the ones in the
    schema) serve: the body still reaches the pipeline unread by FastAPI, and the upstream is asked for the
    path below the root path (found while testing the schema's routes)."""
    import openai

    from tests.gateway.api.conftest import make_settings
    from tests.servers import serve

    app = create_app(make_settings(sim_url, db_url), env={}, configure_logs=False)
    with serve(app, root_path="/gw") as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="sk-client", max_retries=0)
        r = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(model="gpt-4o-mini", messages=[])
        with pytest.raises(openai.NotFoundError) as files:  # the passthrough refuses what it does not list
            client.vector_stores.list()
    assert r.choices[0].message.content
    assert files.value.code == "endpoint_not_found"
    # the upstream was asked for its own path, not one with the gateway's root path in it (it was
    # /v1/gw/v1/chat/completions, a 404)
    assert [req.path for req in sim.requests] == ["/v1/chat/completions"]
