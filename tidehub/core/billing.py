"""What a finished job measured, as billing quantities: the tokens an upstream reports, the length
of transcribed audio. The price rules themselves are catalog data (catalog/pricing.py)."""

from __future__ import annotations

from typing import Any


def usage_tokens(usage: Any) -> dict[str, float]:
    """An OpenAI ``usage`` object (chat or embeddings) as billing measurements."""
    if not isinstance(usage, dict):
        return {}
    prompt = usage.get("prompt_tokens", usage.get("input_tokens"))
    completion = usage.get("completion_tokens", usage.get("output_tokens", 0))
    if not isinstance(prompt, (int, float)) or not isinstance(completion, (int, float)):
        return {}
    return {"input_tokens": float(prompt), "output_tokens": float(completion)}


def measure(capability: str, output: Any) -> dict[str, float]:
    """Quantities only the result tells: tokens used, the length of transcribed audio."""
    if capability in ("chat", "embeddings") and isinstance(output, dict):
        return usage_tokens(output.get("usage"))
    if capability != "transcribe" or not isinstance(output, dict):
        return {}
    if isinstance(output.get("duration"), (int, float)):  # OpenAI's verbose_json
        seconds = float(output["duration"])
        return {"audio_seconds": seconds, "audio_minutes": seconds / 60}
    ends = [c["timestamp"][1] for c in output.get("chunks") or []
            if isinstance(c, dict) and isinstance(c.get("timestamp"), list) and len(c["timestamp"]) == 2
            and isinstance(c["timestamp"][1], (int, float))]
    if not ends:
        return {}
    seconds = max(ends)
    return {"audio_seconds": seconds, "audio_minutes": seconds / 60}
