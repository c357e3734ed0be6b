"""Input checks fal makes at submit time, reported in fal's (pydantic-style) 422 detail shape.

Deliberately shallow: required fields, "one of these sets of fields" rules and basic JSON types.
Enum values and ranges are left to the gateway's own validation, which is what is under test.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

ErrorDetail = dict[str, Any]

_TYPE_ERRORS = {
    "string": ("string_type", "Input should be a valid string"),
    "integer": ("int_type", "Input should be a valid integer"),
    "number": ("float_type", "Input should be a valid number"),
    "boolean": ("bool_type", "Input should be a valid boolean"),
    "array": ("list_type", "Input should be a valid list"),
    "object": ("dict_type", "Input should be a valid dictionary"),
}


def validate_input(schema: Mapping[str, Any], body: Any) -> list[ErrorDetail]:
    """Problems with ``body`` against the model's input schema; empty when it is acceptable."""
    if not isinstance(body, Mapping):
        return [_error([], "dict_type", "Input should be a valid dictionary")]
    errors = [_error([name], "missing", "field required") for name in _missing(schema, body)]
    properties = schema.get("properties") or {}
    for name, value in body.items():
        spec = properties.get(name)
        if isinstance(spec, Mapping) and not _matches(value, spec):
            kind = _first_type(spec)
            error_type, message = _TYPE_ERRORS.get(kind or "", ("type_error", "Input has the wrong type"))
            errors.append(_error([name], error_type, message))
    return errors


def _missing(schema: Mapping[str, Any], body: Mapping[str, Any]) -> list[str]:
    missing = [name for name in schema.get("required") or [] if body.get(name) is None]
    for combinator in ("anyOf", "oneOf"):
        branches = [b.get("required") or [] for b in schema.get(combinator) or [] if isinstance(b, Mapping)]
        branches = [b for b in branches if b]
        if branches and not any(all(body.get(n) is not None for n in branch) for branch in branches):
            missing += [n for n in branches[0] if body.get(n) is None and n not in missing]
    return missing


def _matches(value: Any, spec: Mapping[str, Any]) -> bool:
    alternatives = spec.get("anyOf") or spec.get("oneOf")
    if alternatives:
        return any(_matches(value, alt) for alt in alternatives if isinstance(alt, Mapping))
    declared = spec.get("type")
    if declared is None:
        return True
    kinds = declared if isinstance(declared, list) else [declared]
    if value is None:
        return "null" in kinds or bool(spec.get("nullable"))
    return any(_is_type(value, kind) for kind in kinds)


def _is_type(value: Any, kind: str) -> bool:
    if kind == "string":
        return isinstance(value, str)
    if kind == "integer":
        if isinstance(value, float):
            return value.is_integer()
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "array":
        return isinstance(value, list)
    if kind == "object":
        return isinstance(value, Mapping)
    if kind == "null":
        return value is None
    return True


def _first_type(spec: Mapping[str, Any]) -> str | None:
    declared = spec.get("type")
    if isinstance(declared, list):
        return next((k for k in declared if k != "null"), None)
    if declared is None:
        for alt in spec.get("anyOf") or spec.get("oneOf") or []:
            if isinstance(alt, Mapping) and (kind := _first_type(alt)):
                return kind
    return declared


def _error(loc: list[str], error_type: str, message: str) -> ErrorDetail:
    return {"loc": ["body", *loc], "msg": message, "type": error_type}
