"""Cut the response components the relay must match out of OpenAI's full OpenAPI document.

    python tests/openai_spec/extract.py path/to/openapi.yaml --commit SHA --date YYYY-MM-DD

writes ``components.json`` beside this file: the named components and every component they
reference, copied verbatim, with their ``$ref``s left as they are (``#/components/schemas/...``
resolves inside the file, which keeps the spec's layout). Standard library and PyYAML only.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path
from typing import Any

import yaml

#: The components the relay's answers are checked against (names as in the spec).
ROOTS = (
    "ListModelsResponse",
    "Model",
    "CreateChatCompletionResponse",
    "CreateChatCompletionStreamResponse",
    "CreateEmbeddingResponse",
    "ImagesResponse",
    "CreateTranscriptionResponseJson",
    "CreateTranscriptionResponseVerboseJson",
    "CreateTranslationResponseJson",
    "CreateTranslationResponseVerboseJson",
    "VideoResource",
    "DeletedVideoResource",
    "ErrorResponse",
)
_PREFIX = "#/components/schemas/"
OUT = Path(__file__).with_name("components.json")


def closure(schemas: dict[str, Any], roots: tuple[str, ...]) -> dict[str, Any]:
    """``roots`` and every schema they reach through ``$ref``, in name order."""
    wanted: dict[str, Any] = {}
    pending = list(roots)
    while pending:
        name = pending.pop()
        if name in wanted:
            continue
        if name not in schemas:
            raise SystemExit(f"component {name!r} is not in the spec")
        wanted[name] = schemas[name]
        pending.extend(_refs(schemas[name]))
    return dict(sorted(wanted.items()))


def _refs(node: Any) -> list[str]:
    found: list[str] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                if not (isinstance(value, str) and value.startswith(_PREFIX)):
                    raise SystemExit(f"unexpected $ref {value!r}: only local component refs are handled")
                found.append(value[len(_PREFIX):])
            else:
                found.extend(_refs(value))
    elif isinstance(node, list):
        for item in node:
            found.extend(_refs(item))
    return found


def _plain(value: Any) -> Any:
    # YAML reads unquoted dates as dates; the spec's JSON twin has them as strings.
    if isinstance(value, (datetime.date, datetime.datetime)):
        return value.isoformat()
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("spec", type=Path, help="openapi.yaml (or openapi.json) of openai/openai-openapi")
    parser.add_argument("--commit", required=True, help="the openai/openai-openapi commit the spec is from")
    parser.add_argument("--date", required=True, help="that commit's date, YYYY-MM-DD")
    parser.add_argument("--path", default="openapi.yaml", help="the spec's path in that repository")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with args.spec.open("rb") as handle:
        spec = yaml.load(handle, Loader=loader)  # JSON is YAML too
    subset = {
        "x-source": {
            "repository": "https://github.com/openai/openai-openapi",
            "path": args.path,
            "commit": args.commit,
            "date": args.date,
            "license": "MIT",
            "info.version": spec["info"]["version"],
            "extracted_by": "tests/openai_spec/extract.py",
        },
        "openapi": spec["openapi"],
        "components": {"schemas": closure(spec["components"]["schemas"], ROOTS)},
    }
    args.out.write_text(json.dumps(subset, indent=1, ensure_ascii=False, default=_plain) + "\n", encoding="utf-8")
    print(f"{args.out}: {len(subset['components']['schemas'])} components", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
