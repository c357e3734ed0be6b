"""Schema-driven fuzzing: schemathesis makes requests from each OpenAPI document for every
operation, with a valid key, against a real gateway on the simulator; no answer may be a 5xx and
every answer must be one the document describes (status, content type, headers, body).

Bounded: a few generated cases per operation plus the document's examples (the catalog's), with
a fixed seed so that CI sees the same cases each run."""

from __future__ import annotations

import os
from typing import Any, Callable

import httpx
import pytest
import schemathesis
from schemathesis import GenerationMode
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance, response_headers_conformance, response_schema_conformance, status_code_conformance,
)

from tidehub.core.ssrf import StaticResolver

DOCUMENTS = {"hub": "/hub/v1/openapi.json", "ms": "/ms/v1/openapi.json", "relay": "/v1/openapi.json",
             "api": "/api/openapi.json"}
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance]
#: Generated cases per operation, beyond the document's own examples (more, and a fresh seed each
#: run, with TIDEHUB_FUZZ_CASES=N, to look for new failures by hand).
CASES = int(os.environ.get("TIDEHUB_FUZZ_CASES", "3"))
SEEDED = "TIDEHUB_FUZZ_CASES" not in os.environ
#: Cases per operation that break the schema on purpose (a wrong type, a missing field): each must
#: be refused in the dialect's envelope, never with a 5xx.
BROKEN = int(os.environ.get("TIDEHUB_FUZZ_BROKEN", "2"))

# URLs in inputs and webhooks: names that resolve nowhere (the guard's resolver below knows none, so
# nothing asks DNS), loopback ones the guard refuses, and data: URLs. Nothing leaves the machine.
_PATHS = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=12)
schemathesis.openapi.format("uri", st.one_of(
    _PATHS.map(lambda p: f"https://media.invalid/{p}.png"),
    _PATHS.map(lambda p: f"http://127.0.0.1:9/{p}"),
    st.just("data:image/png;base64,iVBORw0KGgo="),
))


def _fuzz(operation: Any, strategy: Any, call: Callable[[Any], None], examples: int) -> None:
    @settings(max_examples=examples, deadline=None, database=None, derandomize=SEEDED,
              suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate])
    @given(strategy)
    def run(case: Any) -> None:
        call(case)

    run()


@pytest.mark.fuzz
# Schemathesis builds its example cases with ``random``, which Hypothesis frowns on; not ours to fix.
@pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning")
@pytest.mark.parametrize("name", DOCUMENTS)
def test_every_operation_answers_as_its_document_says(make_gateway: Callable[..., Any], name: str) -> None:
    gateway = make_gateway()
    gateway.gateway.guard._resolver = StaticResolver({})  # no name resolves: no DNS query leaves the machine
    headers = {"Authorization": f"Bearer {gateway.new_key(credits=10**12)}"}
    doc = httpx.get(gateway.url + DOCUMENTS[name], timeout=30).json()
    schema = schemathesis.openapi.from_dict(doc)
    base_url = gateway.url + doc["servers"][0]["url"]
    failures: list[str] = []
    operations = 0
    answered: dict[str, set[int]] = {}

    def call(case: Any) -> None:
        response = case.call_and_validate(base_url=base_url, headers=headers, checks=CHECKS, timeout=60)
        answered.setdefault(case.operation.label, set()).add(response.status_code)

    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1
        strategies = [(operation.as_strategy(), CASES),
                      (operation.as_strategy(generation_mode=GenerationMode.NEGATIVE), BROKEN),
                      *((s, 1) for s in schema.get_strategies_from_examples(operation))]
        for i, (strategy, count) in enumerate(strategies):
            try:
                _fuzz(operation, strategy, call, count)
            except Unsatisfiable:
                if i != 1:  # nothing to break in an operation without parameters or body
                    raise
            except (Exception, BaseExceptionGroup) as exc:  # every failing operation is reported
                failures.append(f"{operation.label}: {type(exc).__name__}: {str(exc)[:3000]}")
    assert not failures, f"{len(failures)} of {operations} operations failed:\n\n" + "\n\n".join(failures)
    assert operations == sum(len(item) for item in doc["paths"].values())
    # Not only refusals: each request body's examples (the catalog's) were accepted.
    exemplified = {f"{method.upper()} {path}" for path, item in doc["paths"].items() for method, op in item.items()
                   if any(media.get("examples") for media in op.get("requestBody", {}).get("content", {}).values())}
    refused = sorted(label for label in exemplified if not any(200 <= s < 300 for s in answered.get(label, ())))
    assert exemplified and not refused, f"the examples of these were never accepted: {refused}"
