"""The OpenAPI documents: valid OpenAPI 3.1, served without a key, covering every route, with each
catalog model's input schema and examples in its request body, built once per catalog."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest
from jsonschema import Draft202012Validator
from openapi_spec_validator import OpenAPIV31SpecValidator
from starlette.routing import Mount, Route
from starlette.testclient import TestClient

from tidehub.api import openapi
from tidehub.app import create_app
from tidehub.config import Settings

DOCUMENTS = {"hub": "/hub/v1/openapi.json", "ms": "/ms/v1/openapi.json", "relay": "/v1/openapi.json",
             "api": "/api/openapi.json"}


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    data = tmp_path_factory.mktemp("openapi")
    app = create_app(Settings(data_dir=data, database_url=f"sqlite:///{data / 'tidehub.db'}", engine_enabled=False))
    with TestClient(app) as client:
        app.state.client = client
        yield app


@pytest.fixture(scope="module")
def documents(app: Any) -> dict[str, dict[str, Any]]:
    out = {}
    for name, url in DOCUMENTS.items():
        response = app.state.client.get(url)  # no Authorization header: none is needed
        assert response.status_code == 200, (url, response.text[:300])
        assert response.headers["content-type"].startswith("application/json")
        out[name] = response.json()
    return out


@pytest.mark.parametrize("name", DOCUMENTS)
def test_each_document_is_valid_openapi_3_1(documents: dict[str, dict[str, Any]], name: str) -> None:
    doc = documents[name]
    assert doc["openapi"].startswith("3.1")
    OpenAPIV31SpecValidator(doc).validate()
    assert doc["components"]["securitySchemes"]["bearer"] == {
        "type": "http", "scheme": "bearer", "description": "An API key: `Authorization: Bearer <key>`."}


def _operations(doc: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in doc["paths"].items():
        for method, op in item.items():
            yield path, method, op


def test_every_route_of_every_dialect_is_documented(app: Any, documents: dict[str, dict[str, Any]]) -> None:
    mounted = {"/hub/v1": "hub", "/ms/v1": "ms", "/v1": "relay", "/api/user": "api", "/api/video": "api"}
    seen = 0
    for route in app.routes:
        if isinstance(route, Mount) and route.path in mounted:
            doc = documents[mounted[route.path]]
            server = doc["servers"][0]["url"]
            for sub in route.routes:
                assert isinstance(sub, Route)
                assert openapi.operation_of(sub) is not None, f"{route.path}{sub.path} has no description"
                path = (route.path + sub.path).removeprefix(server)
                path = openapi._CONVERTOR.sub(r"{\1}", path)
                for method in sub.methods - {"HEAD"}:
                    matching = [p for p, m, _ in _operations(doc)
                                if m == method.lower() and (p == path or "{" in path and _expands(path, p))]
                    assert matching, f"{method} {route.path}{sub.path} is not in the {mounted[route.path]} document"
                    seen += 1
    assert seen >= 40
    assert documents["api"]["paths"]["/health"]["get"]["security"] == []


def _expands(template: str, path: str) -> bool:
    head = template[:template.rindex("{")]
    return path.startswith(head) and "{" not in path[len(head):]


def test_every_operation_answers_its_errors_in_the_dialects_envelope(documents: dict[str, dict[str, Any]]) -> None:
    envelopes = {"hub": {"error_code", "error_message", "field"}, "ms": {"error"}, "api": {"success", "message"}}
    for name, doc in documents.items():
        schemas = doc["components"]["schemas"]
        error_ref = "#/components/schemas/" + ("ErrorResponse" if name == "relay" else "Error")
        if name in envelopes:
            assert set(schemas["Error"]["required"]) >= envelopes[name]
        for path, method, op in _operations(doc):
            codes = {int(c) for c in op["responses"] if c != "200"}
            if op["security"]:
                assert {401, 429} <= codes, (name, method, path)
            for code in codes - ({503} if path == "/health" else set()):
                assert op["responses"][str(code)]["content"]["application/json"]["schema"] == {"$ref": error_ref}


def _body_schema(doc: dict[str, Any], path: str) -> dict[str, Any]:
    return doc["paths"][path]["post"]["requestBody"]["content"]["application/json"]


def test_hub_bodies_are_the_catalog_models_input_schemas(app: Any, documents: dict[str, dict[str, Any]]) -> None:
    gw = app.state.gateway
    doc = documents["hub"]
    checked = 0
    for model in gw.catalog.hub_models.values():
        endpoints = [e for e in model.endpoints if not e.relay_only]
        if not endpoints:
            continue
        media = _body_schema(doc, f"/{endpoints[0].capability}")
        variants = media["schema"].get("oneOf", [media["schema"]])
        mine = [v for v in variants if model.id in v["properties"]["model"]["enum"]]
        assert len(mine) == 1, model.id
        wanted = endpoints[0].input_schema if len(endpoints) == 1 else {"oneOf": [e.input_schema for e in endpoints]}
        assert mine[0]["properties"]["input"] == wanted
        assert mine[0]["required"] == ["model", "input"]
        if endpoints[0].examples:
            assert media["examples"][model.id]["value"] == {"model": model.id, "input": endpoints[0].examples[0]}
        checked += 1
    assert checked >= 20


def test_ms_has_one_run_path_per_endpoint_with_its_schema(app: Any, documents: dict[str, dict[str, Any]]) -> None:
    gw = app.state.gateway
    doc = documents["ms"]
    runs = {p for p in doc["paths"] if p.startswith("/run/")}
    runnable = [ep for ep in gw.catalog.endpoints.values() if not ep.relay_only]
    assert runs == {f"/run/{ep.slug}" for ep in runnable}
    for ep in runnable:
        media = _body_schema(doc, f"/run/{ep.slug}")
        assert media["schema"]["properties"]["input"] == ep.input_schema
        assert [e["value"] for e in media["examples"].values()] == [{"input": ex} for ex in ep.examples]


def test_relay_bodies_name_the_models_it_serves(app: Any, documents: dict[str, dict[str, Any]]) -> None:
    gw = app.state.gateway
    doc = documents["relay"]
    paths = {"chat": "/chat/completions", "embeddings": "/embeddings", "images": "/images/generations"}
    for surface, path in paths.items():
        schema = _body_schema(doc, path)["schema"]
        named = {m for v in schema.get("oneOf", [schema]) for m in v["properties"]["model"].get("enum")
                 or [v["properties"]["model"]["const"]]}
        assert named == {name for (where, name) in gw.relay.models if where == surface}
    form = doc["paths"]["/audio/transcriptions"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert "file" in form["required"]
    ok = doc["paths"]["/chat/completions"]["post"]["responses"]["200"]["content"]
    assert ok["application/json"]["schema"] == {"$ref": "#/components/schemas/CreateChatCompletionResponse"}
    assert "text/event-stream" in ok
    # OpenAI's own components, with no OpenAPI 3.0 leftovers.
    assert "nullable" not in str(doc["components"]["schemas"])


def test_every_example_matches_its_schema(documents: dict[str, dict[str, Any]]) -> None:
    count = 0
    for name, doc in documents.items():
        for path, method, op in _operations(doc):
            for kind, media in op.get("requestBody", {}).get("content", {}).items():
                validator = Draft202012Validator(media["schema"])
                for key, example in media.get("examples", {}).items():
                    problems = [e.message for e in validator.iter_errors(example["value"])]
                    assert not problems, (name, path, key, problems[:3])
                    count += 1
    assert count >= 60


def test_documents_are_built_once_per_catalog(app: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    client = app.state.client
    gw = app.state.gateway
    built: list[str] = []
    real = openapi.build

    def counting(spec: openapi.Spec, *args: Any) -> dict[str, Any]:
        built.append(spec.name)
        return real(spec, *args)

    monkeypatch.setattr(openapi, "build", counting)
    first = client.get("/ms/v1/openapi.json").content
    assert client.get("/ms/v1/openapi.json").content == first
    assert built.count("ms") <= 1  # the module's documents fixture may have built it already
    before = len(built)
    # A new catalog (as a reload makes) gives a new document; the next request reuses it.
    from tidehub.catalog import load_catalog
    monkeypatch.setattr(gw, "catalog", load_catalog([Path(__file__).parent / "nowhere"]))
    client.get("/ms/v1/openapi.json")
    client.get("/ms/v1/openapi.json")
    assert built[before:] == ["ms"]


def test_docs_page_offers_every_document_under_a_strict_policy(app: Any) -> None:
    import re

    client = app.state.client
    page = client.get("/docs")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "script-src 'self';" in policy and "unsafe-inline" not in policy and "connect-src 'self'" in policy
    html = page.text
    # No inline script or style, no handler attributes: everything comes from static files.
    scripts = re.findall(r"<script([^>]*)>(.*?)</script>", html, re.S)
    assert scripts and all('src="' in attrs and not body.strip() for attrs, body in scripts)
    assert "<style" not in html and " style=" not in html and not re.search(r"\son\w+=", html)
    # The selector lists the four documents, each of which answers.
    options = re.findall(r'<option value="([^"]+)" data-name="(\w+)"', html)
    assert sorted(name for _, name in options) == sorted(DOCUMENTS)
    assert {url for url, _ in options} == set(DOCUMENTS.values())
    assert re.search(r'<option value="/hub/v1/openapi.json" data-name="hub" selected>', html)
    chosen = client.get("/docs", params={"doc": "relay"}).text
    assert re.search(r'<option value="/v1/openapi.json" data-name="relay" selected>', chosen)
    # Every file the page loads is served from the gateway itself, with its type.
    kinds = {".js": "javascript", ".css": "text/css", ".png": "image/png"}
    for url in re.findall(r'(?:src|href)="(/docs/static/[^"]+)"', html):
        response = client.get(url)
        assert response.status_code == 200, url
        assert kinds[Path(url).suffix] in response.headers["content-type"], url
    script = client.get("/docs/static/docs.js").text
    for setting in ('layout: "BaseLayout"', "validatorUrl: null", "persistAuthorization: true",
                    "SwaggerUIBundle.presets.apis", "specActions.download"):
        assert setting in script
    assert not re.search(r"https?://", script)
