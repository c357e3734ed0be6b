"""OpenAI's own response schemas (vendored in ``components.json``, see README.md), to check that a
body the relay answers is one OpenAI could have sent.

The spec is OpenAPI 3.1 (JSON Schema 2020-12) with a few 3.0 ``nullable: true`` left in; those are
turned into ``anyOf [..., {"type": "null"}]`` on load. ``integer`` means a JSON integer as written
on the wire (``1.0`` is not one), since typed clients decode these fields into integer types.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError
from jsonschema.validators import extend
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

SPEC_PATH = Path(__file__).with_name("components.json")
_URI = "urn:openai-openapi:components"

_Strict = extend(
    Draft202012Validator,
    type_checker=Draft202012Validator.TYPE_CHECKER.redefine(
        "integer", lambda _checker, value: isinstance(value, int) and not isinstance(value, bool)),
)


def _without_nullable(node: Any) -> Any:
    """OpenAPI 3.0's ``nullable: true`` in 3.1 terms; ``nullable: false`` is simply dropped."""
    if isinstance(node, list):
        return [_without_nullable(item) for item in node]
    if not isinstance(node, dict):
        return node
    converted = {key: _without_nullable(value) for key, value in node.items() if key != "nullable"}
    if node.get("nullable") is True:
        return {"anyOf": [converted, {"type": "null"}]}
    return converted


@cache
def _document() -> dict[str, Any]:
    return _without_nullable(json.loads(SPEC_PATH.read_text(encoding="utf-8")))


@cache
def _validator(component: str) -> Any:
    if component not in _document()["components"]["schemas"]:
        raise KeyError(f"{component!r} is not vendored in {SPEC_PATH.name}; add it to extract.py's ROOTS")
    registry = Registry().with_resource(_URI, Resource.from_contents(_document(), default_specification=DRAFT202012))
    return _Strict({"$ref": f"{_URI}#/components/schemas/{component}"}, registry=registry)


def source() -> dict[str, Any]:
    """Where the vendored schemas come from (repository, path, commit, date)."""
    return _document()["x-source"]


def problems(body: Any, component: str) -> list[str]:
    """What is wrong with ``body`` as a ``component``, one line per problem; empty when it matches."""
    return [_describe(error) for error in sorted(_validator(component).iter_errors(body), key=_path)]


def check(body: Any, component: str) -> Any:
    """``body`` if it matches ``component``; otherwise an AssertionError naming each wrong field."""
    found = problems(body, component)
    if found:
        shown = json.dumps(body, ensure_ascii=False, default=str)
        shown = shown if len(shown) <= 1500 else shown[:1500] + "..."
        raise AssertionError(f"not an OpenAI {component} ({source()['commit'][:12]}):\n  "
                             + "\n  ".join(found) + f"\nbody: {shown}")
    return body


def _path(error: ValidationError) -> str:
    out = "$"
    for part in error.absolute_path:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def _describe(error: ValidationError) -> str:
    # Under anyOf/oneOf, name the problem in the branch that came closest, not "not valid under any
    # of the given schemas"; the spec's ``{"type": "null"}`` alternative is never the closest.
    while error.context:
        branches = [e for e in error.context if e.validator != "type" or e.validator_value != "null"]
        error = max(branches or error.context, key=lambda e: len(e.absolute_path))
    return f"{_path(error)}: {error.message}"
