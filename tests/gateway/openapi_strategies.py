"""Hypothesis strategies generated from the gateway's OpenAPI schema (``app.openapi()``), for the fuzz test.

``operations(openapi)`` lists every (method, path template, body schema) the schema documents;
``body_values(schema, openapi, hints)`` draws JSON values that follow a body schema (mostly: the
``model`` field is drawn from ``hints`` so that requests reach the upstream); ``mutated(values)`` breaks a
valid body in one of the ways clients and attackers do (a field removed, retyped, huge, deeply nested,
NUL/CR/LF, numbers past 64 bits).

Only the JSON Schema that Pydantic emits is understood: ``$ref``, ``anyOf``/``oneOf``, ``const``, ``enum``,
the six types with their length and range bounds, ``additionalProperties``. Sizes stay small (a few items
per array, short strings) so that hundreds of requests run in seconds; the huge cases are mutations.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

MAX_DEPTH = 6
HUGE_STRING = 300_000  # characters: over any column, under the body limit
DEEP = 300  # levels of nesting inside a body (a whole body nested far deeper is a hostile case of its own)


Hint = Callable[[st.SearchStrategy[Any]], st.SearchStrategy[Any]]
"""A property's strategy, given the one its schema implies."""


@dataclass(frozen=True, slots=True)
class Operation:
    method: str
    path: str
    """The path template, ``{name}`` for each path parameter."""
    body: dict[str, Any] | None
    """The request body's JSON schema (a ``$ref`` into components), or None."""
    path_params: tuple[str, ...]
    multipart: bool = False
    """The body is a multipart upload (``file`` and ``purpose``)."""

    @property
    def id(self) -> str:
        return f"{self.method} {self.path}"


def operations(openapi: Mapping[str, Any]) -> list[Operation]:
    """Every operation in the schema, in its order."""
    out = []
    for path, item in openapi["paths"].items():
        for method, op in item.items():
            content = op.get("requestBody", {}).get("content", {})
            body = content.get("application/json", {}).get("schema")
            params = tuple(p["name"] for p in op.get("parameters", ()) if p.get("in") == "path")
            out.append(Operation(method.upper(), path, body, params, "multipart/form-data" in content))
    return out


def _json_scalars() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**63), max_value=2**63 - 1),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=12),
    )


def json_values() -> st.SearchStrategy[Any]:
    """Any small JSON value."""
    return st.recursive(
        _json_scalars(),
        lambda inner: st.one_of(
            st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)
        ),
        max_leaves=6,
    )


def _resolve(schema: Mapping[str, Any], openapi: Mapping[str, Any]) -> Mapping[str, Any]:
    ref = schema.get("$ref")
    if ref is None:
        return schema
    name = ref.rsplit("/", 1)[1]
    resolved: Mapping[str, Any] = openapi["components"]["schemas"][name]
    return resolved


def body_values(
    schema: Mapping[str, Any],
    openapi: Mapping[str, Any],
    hints: Mapping[str, Hint],
    depth: int = 0,
) -> st.SearchStrategy[Any]:
    """Values that follow ``schema``; a property named in ``hints`` is drawn from ``hint(strategy)``
    instead (the hint may keep the schema's strategy as one of its choices)."""
    schema = _resolve(schema, openapi)
    if "const" in schema:
        return st.just(schema["const"])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    for key in ("anyOf", "oneOf"):
        if key in schema:
            options = [s for s in schema[key] if not (depth >= MAX_DEPTH and s.get("type") != "null")]
            return st.one_of([body_values(s, openapi, hints, depth + 1) for s in options or schema[key]])
    kind = schema.get("type")
    if kind is None:
        return json_values()
    if kind == "object":
        props: Mapping[str, Any] = schema.get("properties", {})
        required = set(schema.get("required", ()))

        def field(name: str, sub: Mapping[str, Any]) -> st.SearchStrategy[Any]:
            values = body_values(sub, openapi, hints, depth + 1)
            hint = hints.get(name)
            return values if hint is None else hint(values)

        fixed = {n: field(n, s) for n, s in props.items() if n in required}
        optional = (
            {} if depth >= MAX_DEPTH else {n: field(n, s) for n, s in props.items() if n not in required}
        )
        base = st.fixed_dictionaries(fixed, optional=optional)
        extra = schema.get("additionalProperties", True)
        if extra is False or depth >= MAX_DEPTH:
            return base
        extra_values = json_values() if extra is True else body_values(extra, openapi, hints, depth + 1)
        # Unknown fields now and then: a translated request refuses them (400), so always would hide the rest.
        unknown = st.one_of(
            st.just({}),
            st.just({}),
            st.just({}),
            st.dictionaries(st.text(min_size=1, max_size=10), extra_values, max_size=2),
        )
        return st.builds(lambda known, more: {**more, **known}, base, unknown)
    if kind == "array":
        items = schema.get("items", {})
        low = schema.get("minItems", 0)
        return st.lists(body_values(items, openapi, hints, depth + 1), min_size=low, max_size=max(low, 3))
    if kind == "string":
        low = schema.get("minLength", 0)
        return st.text(min_size=low, max_size=min(schema.get("maxLength", 40), 40))
    if kind == "integer":
        return st.integers(
            min_value=schema.get("minimum", schema.get("exclusiveMinimum", -(2**31))),
            max_value=schema.get("maximum", 2**31),
        )
    if kind == "number":
        return st.floats(
            min_value=schema.get("minimum"),
            max_value=schema.get("maximum"),
            allow_nan=False,
            allow_infinity=False,
        )
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    raise ValueError(f"unsupported schema type {kind!r}")


# ---- breaking a body -------------------------------------------------------------------------------


def nested(levels: int, leaf: Any) -> Any:
    value = leaf
    for i in range(levels):
        value = [value] if i % 2 else {"a": value}
    return value


HOSTILE_VALUES: Sequence[Any] = (
    None,
    True,
    0,
    -1,
    2**63 - 1,
    -(2**63),
    1.7976931348623157e308,
    -1e-320,
    "",
    "\x00",
    "a\r\nX-Injected: 1",
    "\ud7ff\ue000\U0010ffff",
    "x" * HUGE_STRING,
    "é" * 1_000,
    [],
    {},
    [None] * 1_000,
    nested(DEEP, "leaf"),
)


def mutated(values: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``values`` broken once: a key dropped, a key's value (or a new key's) replaced by a hostile value,
    or the whole body replaced by one."""

    @st.composite
    def mutate(draw: st.DrawFn) -> Any:
        value = draw(values)
        if not isinstance(value, dict) or draw(st.integers(0, 9)) == 0:
            return draw(st.sampled_from(HOSTILE_VALUES))
        value = dict(value)
        keys = sorted(value)
        action = draw(st.sampled_from(["drop", "replace", "add"] if keys else ["add"]))
        if action == "drop":
            del value[draw(st.sampled_from(keys))]
        elif action == "replace":
            value[draw(st.sampled_from(keys))] = draw(st.sampled_from(HOSTILE_VALUES))
        else:
            name = draw(st.sampled_from(["model", "messages", "stream", "max_tokens", "\x00", "x" * 300]))
            value[name] = draw(st.sampled_from(HOSTILE_VALUES))
        return value

    return mutate()
