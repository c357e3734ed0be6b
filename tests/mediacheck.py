"""Checks that a task's output files are real media of the declared kind."""

from __future__ import annotations

import io
import math
import struct
import wave
from typing import Any

import av
import httpx
from PIL import Image

PIL_FORMATS = {"image/png": "PNG", "image/jpeg": "JPEG", "image/webp": "WEBP"}


def files_in(value: Any) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    if isinstance(value, dict):
        if isinstance(value.get("url"), str):
            found.append(value)
        for child in value.values():
            found.extend(files_in(child) if isinstance(child, (dict, list)) else [])
    elif isinstance(value, list):
        for child in value:
            found.extend(files_in(child))
    return found


def download(url: str) -> httpx.Response:
    resp = httpx.get(url, timeout=60)
    assert resp.status_code == 200, f"{url}: HTTP {resp.status_code}"
    return resp


def check_image(item: dict[str, Any]) -> Image.Image:
    resp = download(item["url"])
    image = Image.open(io.BytesIO(resp.content))
    image.load()
    content_type = resp.headers["content-type"].split(";")[0]
    assert image.format == PIL_FORMATS[content_type], (image.format, content_type)
    if "width" in item:
        assert image.size == (item["width"], item["height"])
    return image


def probe(url: str) -> dict[str, Any]:
    """Duration (s), video size and stream kinds of a media file."""
    data = download(url).content
    with av.open(io.BytesIO(data)) as container:
        duration = container.duration / av.time_base if container.duration else 0.0
        video = next((s for s in container.streams if s.type == "video"), None)
        return {
            "duration": duration,
            "size": (video.codec_context.width, video.codec_context.height) if video else None,
            "kinds": sorted({s.type for s in container.streams}),
            "format": container.format.name,
        }


def check_output(capability: str, output: dict[str, Any]) -> None:
    """Every file of a completed task downloads and decodes as its capability promises."""
    files = files_in(output)
    if capability == "image":
        assert output["images"], output
        for item in output["images"]:
            check_image(item)
    elif capability == "video":
        info = probe(output["video"]["url"])
        assert "video" in info["kinds"] and info["duration"] > 0.5, info
    elif capability == "audio":
        info = probe(output["audio"]["url"])
        assert info["kinds"] == ["audio"] and info["duration"] > 1, info
    elif capability == "chat":
        assert output["choices"][0]["message"]["content"] and output["usage"]["completion_tokens"] > 0
    elif capability == "embeddings":
        assert output["data"][0]["embedding"] and output["usage"]["prompt_tokens"] > 0
    elif capability == "transcribe":
        assert isinstance(output["text"], str) and output["text"].strip()
        assert output["chunks"] and all(len(c["timestamp"]) == 2 for c in output["chunks"])
    else:
        raise AssertionError(f"unknown capability {capability}")
    for item in files:
        assert "/files/" in item["url"], f"{item['url']} is not a Tidehub copy"


def wav(seconds: float, rate: int = 16000) -> bytes:
    """A mono 16-bit WAV of a 440 Hz tone: real audio for transcription uploads."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        frames = (int(8000 * math.sin(2 * math.pi * 440 * i / rate)) for i in range(int(seconds * rate)))
        out.writeframes(b"".join(struct.pack("<h", sample) for sample in frames))
    return buffer.getvalue()
