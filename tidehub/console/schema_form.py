"""The playground's form for a model, made from its ``input_schema``: a field per property (text,
a select for an enum, numbers, a checkbox for a boolean, a comma list for an array of plain values,
JSON for anything nested), the example's values as the defaults; and the submitted form read back
into the task's input. Only the form's own mistakes are found here (a number that is not one, JSON
that does not parse); the schema's rules are core's, checked at submit like any other task."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from starlette.datastructures import FormData

from tidehub.catalog import Endpoint
from tidehub.errors import InvalidInput

MAX_VALUE = 20_000
# Long text gets a text area.
LONG_TEXT = ("prompt", "text", "lyrics", "negative_prompt", "system_prompt", "style")


@dataclass(frozen=True)
class SchemaField:
    name: str
    label: str
    kind: str  # text, textarea, select, integer, number, boolean, list, json
    required: bool
    description: str
    options: tuple[str, ...] = ()
    item_type: str = "string"  # of a list
    accepts_text: bool = False  # a json field whose schema also takes a plain string


def _types(prop: dict[str, Any]) -> set[str]:
    kind = prop.get("type")
    found = set(kind) if isinstance(kind, list) else {kind} if kind else set()
    for branch in prop.get("anyOf", []) + prop.get("oneOf", []):
        found |= _types(branch)
    return found


def fields_of(endpoint: Endpoint) -> list[SchemaField]:
    schema = endpoint.input_schema
    required = set(schema.get("required", ()))
    out = []
    for name, prop in schema.get("properties", {}).items():
        if not isinstance(prop, dict):
            continue
        types = _types(prop)
        label = name.replace("_", " ").capitalize()
        description = str(prop.get("description") or "")
        common = {"name": name, "label": label, "required": name in required, "description": description}
        if "enum" in prop:
            out.append(SchemaField(kind="select", options=tuple(str(v) for v in prop["enum"]), **common))
        elif types == {"string"}:
            long = name in LONG_TEXT or name.endswith("_prompt") or int(prop.get("maxLength", 0) or 0) > 300
            out.append(SchemaField(kind="textarea" if long else "text", **common))
        elif types == {"integer"}:
            out.append(SchemaField(kind="integer", **common))
        elif types <= {"number", "integer"} and types:
            out.append(SchemaField(kind="number", **common))
        elif types == {"boolean"}:
            out.append(SchemaField(kind="boolean", **common))
        elif types == {"array"} and _types(prop.get("items") or {}) <= {"string", "integer", "number"} \
                and _types(prop.get("items") or {}):
            item = next(iter(_types(prop["items"])))
            out.append(SchemaField(kind="list", item_type=item, **common))
        else:
            out.append(SchemaField(kind="json", accepts_text="string" in types, **common))
    return out


def defaults_of(endpoint: Endpoint, fields: list[SchemaField], given: dict[str, Any] | None = None) -> dict[str, str]:
    """The form's starting values: the schema's defaults, then the first example's (or ``given``:
    the input of an earlier task, to run again with changes)."""
    props = endpoint.input_schema.get("properties", {})
    values: dict[str, Any] = {name: prop["default"] for name, prop in props.items()
                              if isinstance(prop, dict) and "default" in prop}
    values.update(given if given is not None else (endpoint.examples[0] if endpoint.examples else {}))
    return {f.name: as_text(f, values[f.name]) for f in fields if f.name in values}


def as_text(field: SchemaField, value: Any) -> str:
    if field.kind == "boolean":
        return "true" if value else "false"
    if field.kind == "list" and isinstance(value, list):
        return ", ".join(str(v) for v in value)
    if field.kind == "json" and not (field.accepts_text and isinstance(value, str)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def read_input(form: FormData, fields: list[SchemaField]) -> dict[str, Any]:
    """The task's input from the submitted form. An empty field is left out (the schema's default
    applies); a value the form cannot read raises InvalidInput naming its field."""
    data: dict[str, Any] = {}
    for f in fields:
        if f.kind == "boolean":
            # A hidden "false" comes before the checkbox: the last value given wins.
            given = form.getlist(f.name)
            if given:
                data[f.name] = str(given[-1]) == "true"
            continue
        raw = str(form.get(f.name) or "")
        if f.kind not in ("textarea", "text"):
            raw = raw.strip()
        if not raw.strip():
            continue
        if len(raw) > MAX_VALUE or "\x00" in raw:
            raise InvalidInput(f"{f.name}: at most {MAX_VALUE} characters, and no NUL", field=f.name)
        data[f.name] = _parse(f, raw)
    return data


def _parse(f: SchemaField, raw: str) -> Any:
    if f.kind == "integer":
        return _number(f.name, raw, int, "a whole number")
    if f.kind == "number":
        return _number(f.name, raw, float, "a number")
    if f.kind == "select":
        if raw not in f.options:
            raise InvalidInput(f"{f.name}: must be one of {', '.join(f.options)}", field=f.name)
        return raw
    if f.kind == "list":
        items = [item.strip() for item in raw.replace("\n", ",").split(",") if item.strip()]
        if f.item_type in ("integer", "number"):
            kind = int if f.item_type == "integer" else float
            return [_number(f.name, item, kind, "a list of numbers") for item in items]
        return items
    if f.kind == "json":
        if f.accepts_text and raw[:1] not in ("[", "{"):
            return raw
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise InvalidInput(f"{f.name}: not valid JSON ({exc.msg} at character {exc.pos})", field=f.name) from None
    return raw


def _number(name: str, raw: str, kind: type, what: str) -> Any:
    try:
        value = kind(raw.replace("_", ""))
    except ValueError:
        raise InvalidInput(f"{name}: must be {what}", field=name) from None
    if kind is float and not math.isfinite(value):
        raise InvalidInput(f"{name}: must be a finite number", field=name)
    if kind is float and value.is_integer() and "." not in raw and "e" not in raw.lower():
        return int(value)
    return value


def field_of_error(field: str | None, fields: list[SchemaField]) -> str:
    """The form field a core error names: ``input.image_urls[0]`` is the field ``image_urls``."""
    if not field:
        return "input"
    name = field.removeprefix("input.").split(".", 1)[0].split("[", 1)[0]
    return name if any(f.name == name for f in fields) else "input"
