"""Catalog entries and their lookup.

Each data file (YAML, one per vendor family) lists endpoints; an operator adds a model by dropping
another file in a directory named by ``TIDEHUB_CATALOG_DIRS``. Nothing here is vendor code.
"""

from __future__ import annotations

import copy
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import fastjsonschema
import orjson
import yaml

from tidehub.catalog.pricing import PriceRule
from tidehub.errors import QUOTE_LIMIT, InvalidInput, NotFound, clipped, quoted

DATA_DIR = Path(__file__).parent / "data"
CAPABILITIES = ("image", "video", "audio", "transcribe", "chat", "embeddings")


@dataclass(eq=False)
class Endpoint:
    slug: str
    model: str
    hub_ids: tuple[str, ...]
    capability: str
    mode: str
    vendor: str
    title: str
    description: str
    tags: tuple[str, ...]
    upstream: dict[str, dict[str, Any]]
    timing: dict[str, float]
    input_schema: dict[str, Any]
    output_schema: dict[str, Any]
    examples: list[dict[str, Any]]
    price: PriceRule
    # Its inputs are uploaded files, which only the OpenAI-compatible relay takes: no task runs it.
    relay_only: bool = False
    source: str = ""
    _validator: Callable[[Any], Any] | None = field(default=None, repr=False)
    _checker: Callable[[Any], Any] | None = field(default=None, repr=False)
    _url_paths: tuple[tuple[str, ...], ...] | None = field(default=None, repr=False)

    @property
    def required(self) -> frozenset[str]:
        return frozenset(self.input_schema.get("required", ()))

    def validate(self, data: Any) -> dict[str, Any]:
        """Check ``data`` against the input schema; return it with the schema's defaults filled in."""
        if not isinstance(data, dict):
            raise InvalidInput("input must be a JSON object", field="input")
        if self._validator is None:
            # Compiled on first use: start-up stays fast with hundreds of models.
            self._validator = fastjsonschema.compile(self.input_schema, use_default=True)
        value = _copied(data)
        try:
            return self._validator(value)
        except fastjsonschema.JsonSchemaValueException as exc:
            raise _input_error(exc, data, self.input_schema) from None

    def check(self, data: dict[str, Any]) -> None:
        """Validate ``data`` as it is, adding no defaults: for the relay, which forwards the client's
        own body and must not pay for a deep copy of every chat history."""
        if self._checker is None:
            self._checker = fastjsonschema.compile(self.input_schema, use_default=False)
        try:
            self._checker(data)
        except fastjsonschema.JsonSchemaValueException as exc:
            raise _input_error(exc, data, self.input_schema) from None

    def media_urls(self, data: dict[str, Any]) -> list[tuple[str, str]]:
        """The URLs in ``data`` that the upstream will fetch, as (field path, URL) in schema order:
        ``("input.image_urls[0]", "https://...")``. Which fields those are is read from the schema
        (see :func:`url_paths`)."""
        if self._url_paths is None:
            self._url_paths = tuple(url_paths(self.input_schema))
        found: list[tuple[str, str]] = []
        for path in self._url_paths:
            _pick(data, path, "input", found)
        return found

    def upstream_for(self, adapter: str) -> dict[str, Any] | None:
        return self.upstream.get(adapter)

    def summary(self) -> dict[str, Any]:
        return {
            "endpoint": self.slug,
            "model": self.model,
            "capability": self.capability,
            "mode": self.mode,
            "vendor": self.vendor,
            "title": self.title,
            "description": self.description,
            "tags": list(self.tags),
            "price": self.price.raw,
            "example_price": self.price.quote(self.examples[0]).credits if self.examples else None,
        }


_URL_FORMATS = frozenset({"uri", "url", "iri", "uri-reference", "iri-reference"})


def url_paths(schema: dict[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Where a schema holds URLs to fetch: the paths (property names, ``"*"`` for array items) of
    every string that has ``format: uri`` or sits in a field named ``*_url`` or ``*_urls``, in
    nested objects and arrays too. The rule is the catalog's, so an operator's model files need
    nothing extra."""
    paths: list[tuple[str, ...]] = []
    for name, sub in (schema.get("properties") or {}).items():
        if isinstance(sub, dict):
            paths += _value_paths(sub, (*prefix, name), name.endswith(("_url", "_urls")))
    return paths


def _value_paths(schema: dict[str, Any], path: tuple[str, ...], named_url: bool) -> list[tuple[str, ...]]:
    kind = schema.get("type")
    if kind == "array" or "items" in schema:
        items = schema.get("items")
        return _value_paths(items, (*path, "*"), named_url) if isinstance(items, dict) else []
    if kind == "object" or "properties" in schema:
        return url_paths(schema, path)
    if kind in (None, "string") and (named_url or schema.get("format") in _URL_FORMATS):
        return [path]
    return []


def _pick(value: Any, path: tuple[str, ...], where: str, found: list[tuple[str, str]]) -> None:
    if not path:
        if isinstance(value, str):
            found.append((where, value))
        return
    step, rest = path[0], path[1:]
    if step == "*":
        if isinstance(value, list):
            for i, item in enumerate(value):
                _pick(item, rest, f"{where}[{i}]", found)
    elif isinstance(value, dict) and step in value:
        _pick(value[step], rest, f"{where}.{step}", found)


def _input_error(
    exc: fastjsonschema.JsonSchemaValueException, data: dict[str, Any], schema: dict[str, Any]
) -> InvalidInput:
    path = [str(p) for p in (exc.path or ["data"])[1:]]
    if exc.rule == "additionalProperties":
        allowed = set(schema.get("properties", {}))
        target = data
        for part in path:
            target = target.get(part, {}) if isinstance(target, dict) else {}
        extra = sorted(set(target) - allowed) if isinstance(target, dict) else []
        if extra:
            path = path + [clipped(extra[0])]
            return InvalidInput(
                f"input.{'.'.join(path)}: unknown field; allowed fields are "
                f"{', '.join(sorted(allowed))}",
                field="input." + ".".join(path),
            )
    where = "input" + "".join(f".{p}" if not p.isdigit() else f"[{p}]" for p in path)
    reason = exc.message
    prefix = exc.name
    if reason.startswith(prefix):
        reason = reason[len(prefix) :].strip()
    if exc.rule == "anyOf" and all("required" in b for b in exc.rule_definition or []):
        options = [" and ".join(b["required"]) for b in exc.rule_definition]
        reason = f"must include {' or '.join(options)}"
    if exc.rule == "not" and set(exc.rule_definition or {}) == {"required"}:
        reason = f"must not include both {' and '.join(exc.rule_definition['required'])}"
    if exc.rule == "required":
        missing = _first_missing(reason)
        if missing:
            where = f"{where}.{missing}"
            reason = "is required"
    return InvalidInput(f"{where}: {reason}", field=where)


def _first_missing(reason: str) -> str | None:
    # fastjsonschema says "must contain ['prompt'] properties".
    start, end = reason.find("['"), reason.find("']")
    if start == -1 or end == -1:
        return None
    return reason[start + 2 : end].split("', '")[0]


@dataclass
class HubModel:
    """A Hub model id: one or several endpoints (modes) chosen by the input."""

    id: str
    endpoints: list[Endpoint]

    @property
    def primary(self) -> Endpoint:
        return self.endpoints[0]

    def select(self, data: Any) -> Endpoint:
        """The endpoint whose required fields the input has, preferring the most specific one."""
        if len(self.endpoints) == 1 or not isinstance(data, dict):
            return self.primary
        present = set(data)
        fitting = [e for e in self.endpoints if e.required <= present]
        if not fitting:
            return self.primary
        return max(fitting, key=lambda e: len(e.required))


class Catalog:
    def __init__(self, endpoints: list[Endpoint]) -> None:
        self.endpoints: dict[str, Endpoint] = {}
        self.hub_models: dict[str, HubModel] = {}
        self.by_upstream: dict[tuple[str, str], Endpoint] = {}
        for ep in endpoints:
            if ep.slug in self.endpoints:
                raise ValueError(f"duplicate endpoint slug {ep.slug!r} in {ep.source}")
            self.endpoints[ep.slug] = ep
            for hub_id in ep.hub_ids:
                self.hub_models.setdefault(hub_id, HubModel(hub_id, [])).endpoints.append(ep)
            for adapter, spec in ep.upstream.items():
                self.by_upstream.setdefault((adapter, spec["model"]), ep)

    def endpoint(self, slug: str) -> Endpoint:
        ep = self.endpoints.get(slug)
        if ep is None:
            raise NotFound(_unknown("endpoint", slug, self.endpoints), field="endpoint")
        return ep

    def hub_model(self, hub_id: str) -> HubModel:
        hm = self.hub_models.get(hub_id)
        if hm is None:
            raise NotFound(_unknown("model", hub_id, self.hub_models), field="model")
        return hm


def _unknown(kind: str, name: str, known: dict[str, Any]) -> str:
    # A name far longer than any known one is close to none of them (and costly to compare).
    close = difflib.get_close_matches(name, list(known), n=3, cutoff=0.5) if len(name) <= QUOTE_LIMIT else []
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return f"unknown {kind} {quoted(name)}{hint}"


def _endpoint_from(raw: dict[str, Any], vendor: str, source: str) -> Endpoint:
    upstream = {
        name: (spec if isinstance(spec, dict) else {"model": spec})
        for name, spec in (raw.get("upstream") or {}).items()
    }
    return Endpoint(
        slug=raw["slug"],
        model=raw.get("model") or raw["slug"],
        hub_ids=tuple(raw.get("hub_ids") or ()),
        capability=raw["capability"],
        mode=raw["mode"],
        vendor=raw.get("vendor", vendor),
        title=raw.get("title", raw["slug"]),
        description=raw.get("description", ""),
        tags=tuple(raw.get("tags") or ()),
        upstream=upstream,
        timing={"queue_s": 1.0, "run_s": 10.0, **(raw.get("timing") or {})},
        input_schema=raw["input_schema"],
        output_schema=raw.get("output_schema") or {"type": "object"},
        examples=list(raw.get("examples") or []),
        price=_price(raw, source),
        relay_only=bool(raw.get("relay_only", False)),
        source=source,
    )


def _price(raw: dict[str, Any], source: str) -> PriceRule:
    if "price" not in raw:
        raise ValueError(f"{source}: endpoint {raw.get('slug')!r} has no price rule")
    defaults = {k: v["default"] for k, v in raw["input_schema"].get("properties", {}).items()
                if isinstance(v, dict) and "default" in v}
    try:
        return PriceRule(raw["price"], defaults)
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{source}: endpoint {raw.get('slug')!r} has a bad price rule: {exc}") from None


def load_catalog(extra_dirs: list[Path] | tuple[Path, ...] = ()) -> Catalog:
    endpoints: list[Endpoint] = []
    for directory in (DATA_DIR, *extra_dirs):
        for path in sorted(Path(directory).glob("*.y*ml")):
            doc = yaml.safe_load(path.read_text()) or {}
            vendor = doc.get("vendor", "")
            for raw in doc.get("endpoints") or []:
                endpoints.append(_endpoint_from(raw, vendor, str(path)))
    return Catalog(endpoints)


def upstream_payload(input: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    """The catalog input in the upstream's field names (an upstream spec's optional ``rename``)."""
    rename = spec.get("rename") or {}
    if not rename:
        return input
    return {rename.get(k, k): v for k, v in input.items()}


def _copied(data: dict[str, Any]) -> dict[str, Any]:
    """A copy for the validator to fill defaults into. A JSON body is JSON through and through, and
    orjson copies it by a round trip in a fraction of ``deepcopy``'s time; anything JSON cannot
    carry (an integer past 64 bits, a key that is not a string) is copied the slow way."""
    try:
        return orjson.loads(orjson.dumps(data))
    except (TypeError, orjson.JSONEncodeError):
        return copy.deepcopy(data)
