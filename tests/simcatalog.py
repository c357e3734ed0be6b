"""Small catalog entries for simulator tests, independent of the shipped catalog."""

from __future__ import annotations

from typing import Any

PROMPT_ONLY = {"type": "object", "required": ["prompt"], "properties": {"prompt": {"type": "string"}}}


def sim_endpoint(fal_id: str, capability: str, queue_s: float, run_s: float,
                 schema: dict[str, Any] = PROMPT_ONLY) -> dict[str, Any]:
    return {
        "slug": f"test/{fal_id}",
        "capability": capability,
        "mode": "test",
        "upstream": {"fal": {"model": fal_id}},
        "timing": {"queue_s": queue_s, "run_s": run_s},
        "input_schema": schema,
    }
