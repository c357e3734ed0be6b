"""What a request asks for, reduced to the few numbers an artifact maker needs.

Each spec is a frozen value: equal inputs give equal specs, and the spec's ``cache_key`` names the
file on disk, so identical requests share one rendered file.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from tidehub.sim.models import SimModel

#: Total pixels of a square image per resolution tier (the tier names the square's edge).
IMAGE_EDGES = {"0.5K": 512, "1K": 1024, "2K": 2048, "4K": 4096}
#: gpt-image-2 ``image_size`` presets.
IMAGE_SIZE_PRESETS = {
    "square_hd": (1024, 1024),
    "square": (512, 512),
    "portrait_4_3": (768, 1024),
    "portrait_16_9": (576, 1024),
    "landscape_4_3": (1024, 768),
    "landscape_16_9": (1024, 576),
    "auto": (1024, 1024),
}
#: Short edge of a video per resolution tier.
VIDEO_SHORT_EDGES = {
    "360p": 360, "480p": 480, "540p": 540, "720p": 720, "1024p": 1024, "1080p": 1080, "1440p": 1440, "2160p": 2160,
    "4k": 2160,
}
VIDEO_FPS = 12
DEFAULT_VIDEO_SECONDS = 5
#: Families whose video comes with a soundtrack unless the caller turns it off.
_AUDIO_BY_DEFAULT = {"veo", "kling", "seedance"}
_IMAGE_FORMATS = {"png": "png", "jpeg": "jpeg", "jpg": "jpeg", "webp": "webp"}
_MAX_IMAGE_EDGE = 8192
_SPEC_VERSION = "1"  # bump when a renderer's output changes, so stale cached files are not reused


@dataclass(frozen=True, slots=True)
class ImageSpec:
    width: int
    height: int
    format: str  # png | jpeg | webp
    seed: int

    @property
    def content_type(self) -> str:
        return f"image/{self.format}"

    @property
    def extension(self) -> str:
        return ".jpg" if self.format == "jpeg" else f".{self.format}"


@dataclass(frozen=True, slots=True)
class VideoSpec:
    width: int
    height: int
    seconds: int
    fps: int
    audio: bool
    seed: int

    content_type = "video/mp4"
    extension = ".mp4"

    @property
    def frames(self) -> int:
        return self.seconds * self.fps


@dataclass(frozen=True, slots=True)
class MusicSpec:
    seconds: float
    container: str  # mp3 | wav | ogg
    codec: str  # libmp3lame | pcm_s16le | pcm_mulaw | pcm_alaw | libopus
    sample_rate: int
    bit_rate: int | None
    seed: int

    @property
    def content_type(self) -> str:
        return {"mp3": "audio/mpeg", "wav": "audio/wav", "ogg": "audio/ogg"}[self.container]

    @property
    def extension(self) -> str:
        return ".opus" if self.codec == "libopus" else f".{self.container}"


@dataclass(frozen=True, slots=True)
class TranscriptSpec:
    audio_url: str
    chunk_level: str  # segment | word
    language: str | None
    task: str  # transcribe | translate


MediaSpec = ImageSpec | VideoSpec | MusicSpec


def cache_key(spec: MediaSpec) -> str:
    """A stable name for the file a spec renders to."""
    return hashlib.sha256(f"{_SPEC_VERSION}:{spec!r}".encode()).hexdigest()[:32]


def with_defaults(model: SimModel, inputs: Mapping[str, Any]) -> dict[str, Any]:
    """The input as the model sees it: schema defaults filled in, explicit nulls treated as absent."""
    merged = dict(model.defaults)
    merged.update({k: v for k, v in inputs.items() if v is not None})
    return merged


def input_seed(inputs: Mapping[str, Any]) -> int:
    """The caller's seed, or one derived from the whole input so equal inputs look alike."""
    seed = inputs.get("seed")
    if isinstance(seed, int) and not isinstance(seed, bool):
        return seed & 0x7FFFFFFF
    try:
        blob = orjson.dumps(inputs, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)
    except TypeError:
        blob = repr(sorted(inputs.items(), key=lambda kv: str(kv[0]))).encode()
    return int.from_bytes(hashlib.sha256(blob).digest()[:4], "big") & 0x7FFFFFFF


def work_factor(model: SimModel, inputs: Mapping[str, Any]) -> float:
    """How much longer than nominal this input takes to run: mildly more for longer media."""
    if model.capability == "video":
        return math.sqrt(_video_seconds(inputs.get("duration")) / DEFAULT_VIDEO_SECONDS)
    if model.capability == "audio":
        return math.sqrt(_music_seconds(inputs) / 30.0)
    if model.capability == "image":
        return 1.0 + 0.15 * (_image_count(inputs) - 1)
    return 1.0


def image_specs(model: SimModel, inputs: Mapping[str, Any]) -> list[ImageSpec]:
    width, height = _image_size(model, inputs)
    fmt = _IMAGE_FORMATS.get(str(inputs.get("output_format", "png")).lower(), "png")
    seed = input_seed(inputs)
    return [ImageSpec(width, height, fmt, (seed + i) & 0x7FFFFFFF) for i in range(_image_count(inputs))]


def video_spec(model: SimModel, inputs: Mapping[str, Any]) -> VideoSpec:
    short = VIDEO_SHORT_EDGES.get(str(inputs.get("resolution", "720p")).lower(), 720)
    ratio = _ratio(inputs.get("aspect_ratio"), default=16 / 9)
    if ratio >= 1:
        width, height = short * ratio, short
    else:
        width, height = short, short / ratio
    audio = inputs.get("generate_audio")
    if not isinstance(audio, bool):
        audio = model.family in _AUDIO_BY_DEFAULT
    return VideoSpec(
        width=_even(width),
        height=_even(height),
        seconds=_video_seconds(inputs.get("duration")),
        fps=VIDEO_FPS,
        audio=audio,
        seed=input_seed(inputs),
    )


def music_spec(model: SimModel, inputs: Mapping[str, Any]) -> MusicSpec:
    container, codec, rate, bit_rate = _audio_format(str(inputs.get("output_format", "mp3_44100_128")))
    return MusicSpec(
        seconds=_music_seconds(inputs),
        container=container,
        codec=codec,
        sample_rate=rate,
        bit_rate=bit_rate,
        seed=input_seed(inputs),
    )


def transcript_spec(model: SimModel, inputs: Mapping[str, Any]) -> TranscriptSpec:
    level = str(inputs.get("chunk_level", "segment")).lower()
    language = inputs.get("language")
    return TranscriptSpec(
        audio_url=str(inputs.get("audio_url", "")),
        chunk_level="word" if level == "word" else "segment",
        language=str(language) if language else None,
        task=str(inputs.get("task", "transcribe")),
    )


def _image_count(inputs: Mapping[str, Any]) -> int:
    count = inputs.get("num_images", 1)
    return max(1, min(8, count)) if isinstance(count, int) and not isinstance(count, bool) else 1


def _image_size(model: SimModel, inputs: Mapping[str, Any]) -> tuple[int, int]:
    size = inputs.get("image_size")
    if size is None and model.family == "gpt-image":
        size = "auto" if model.is_edit else "landscape_4_3"
    if isinstance(size, Mapping):
        width, height = _number(size.get("width"), 1024), _number(size.get("height"), 1024)
    elif isinstance(size, str) and size in IMAGE_SIZE_PRESETS:
        width, height = IMAGE_SIZE_PRESETS[size]
    else:
        tier = str(inputs.get("resolution", "1K")).upper()
        edge = IMAGE_EDGES.get(tier, 1024)
        ratio = _ratio(inputs.get("aspect_ratio"), default=1.0)
        width, height = edge * math.sqrt(ratio), edge / math.sqrt(ratio)
    return _multiple_of_8(width), _multiple_of_8(height)


def _ratio(value: Any, default: float) -> float:
    """``"16:9"`` -> 1.777...; ``auto``, absent or malformed -> ``default``."""
    if isinstance(value, str) and ":" in value:
        left, _, right = value.partition(":")
        try:
            ratio = float(left) / float(right)
        except (ValueError, ZeroDivisionError):
            return default
        return min(max(ratio, 1 / 16), 16.0)
    return default


def _video_seconds(value: Any) -> int:
    if isinstance(value, str):
        value = value.strip().lower().removesuffix("s")
        if value in ("", "auto"):
            return DEFAULT_VIDEO_SECONDS
    seconds = _number(value, DEFAULT_VIDEO_SECONDS)
    return int(min(max(round(seconds), 1), 60))


def _music_seconds(inputs: Mapping[str, Any]) -> float:
    length_ms = inputs.get("music_length_ms")
    plan = inputs.get("composition_plan")
    if length_ms is None and isinstance(plan, Mapping):
        sections = plan.get("sections") or []
        length_ms = sum(_number(s.get("duration_ms"), 0) for s in sections if isinstance(s, Mapping)) or None
    return min(max(_number(length_ms, 30000), 1000), 600000) / 1000.0


def _audio_format(name: str) -> tuple[str, str, int, int | None]:
    """ElevenLabs-style ``codec_rate[_kbps]`` -> (container, codec, sample rate, bit rate)."""
    parts = name.lower().split("_")
    codec = parts[0]
    rate = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 44100
    kbps = int(parts[2]) if len(parts) > 2 and parts[2].isdigit() else None
    if codec == "pcm":
        return "wav", "pcm_s16le", rate, None
    if codec == "ulaw":
        return "wav", "pcm_mulaw", 8000, None
    if codec == "alaw":
        return "wav", "pcm_alaw", 8000, None
    if codec == "opus":
        return "ogg", "libopus", 48000, (kbps or 64) * 1000
    if codec == "mp3" and rate in (22050, 24000, 44100, 48000):
        return "mp3", "libmp3lame", rate, (kbps or 128) * 1000
    return "mp3", "libmp3lame", 44100, 128000


def _number(value: Any, default: float) -> float:
    if isinstance(value, bool):
        return default
    try:
        return float(value)
    except (TypeError, ValueError):
        return default


def _multiple_of_8(value: float) -> int:
    return int(min(max(round(value / 8) * 8, 8), _MAX_IMAGE_EDGE))


def _even(value: float) -> int:
    return int(max(round(value / 2) * 2, 2))
