"""Real media files, cheap to make: gradients and shapes, a moving bar, a few tones.

The point is that the gateway handles genuine PNG/MP4/MP3 bytes of the size it asked for (so
mirroring, content types and probing are exercised), not that they look like anything. Every
function here is blocking and CPU-bound; callers run them in a thread pool. PyAV and Pillow release
the GIL while encoding, so several renders proceed in parallel.
"""

from __future__ import annotations

import array
import math
import random
from pathlib import Path

import av
from PIL import Image, ImageDraw

from tidehub.sim.params import ImageSpec, MusicSpec, VideoSpec

_SOUNDTRACK_RATE = 48000
#: Pentatonic scale in Hz; melodies are picked from it so every seed sounds tolerable.
_SCALE = (261.63, 293.66, 329.63, 392.00, 440.00, 523.25, 587.33, 659.25)


def render_image(spec: ImageSpec, path: Path) -> None:
    """A two-colour gradient with a few flat shapes, all chosen by the seed."""
    rng = random.Random(spec.seed)
    top, bottom = _colour(rng), _colour(rng)
    strip = Image.new("RGB", (1, 256))
    strip.putdata([_mix(top, bottom, i / 255) for i in range(256)])
    if rng.random() < 0.5:
        strip = strip.transpose(Image.Transpose.ROTATE_90)
    image = strip.resize((spec.width, spec.height), Image.Resampling.BILINEAR)
    draw = ImageDraw.Draw(image)
    w, h = spec.width, spec.height
    for _ in range(3):
        x0, y0 = rng.uniform(0, 0.7) * w, rng.uniform(0, 0.7) * h
        x1, y1 = x0 + rng.uniform(0.1, 0.3) * w, y0 + rng.uniform(0.1, 0.3) * h
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape((x0, y0, x1, y1), fill=_colour(rng))
    options: dict[str, object] = {
        "png": {"compress_level": 1},
        "jpeg": {"quality": 85},
        "webp": {"quality": 80, "method": 0},
    }[spec.format]
    image.save(path, format=spec.format.upper(), **options)


def render_video(spec: VideoSpec, path: Path) -> None:
    """H.264 MP4 of a bar sweeping across a flat background, with a tone when audio is asked for."""
    rng = random.Random(spec.seed)
    background, bar = _yuv(_colour(rng)), _yuv(_colour(rng))
    tone = _tone(_SOUNDTRACK_RATE, rng.choice(_SCALE[:5]), seconds=1.0, volume=0.2) if spec.audio else b""
    with av.open(str(path), "w", format="mp4", options={"movflags": "+faststart"}) as container:
        video = container.add_stream("libx264", rate=spec.fps)
        video.width, video.height, video.pix_fmt = spec.width, spec.height, "yuv420p"
        video.options = {"preset": "ultrafast", "tune": "zerolatency"}
        audio = container.add_stream("aac", rate=_SOUNDTRACK_RATE, layout="mono") if spec.audio else None
        frame = av.VideoFrame(spec.width, spec.height, "yuv420p")  # reused: x264 copies each picture
        bar_width = max(2, spec.width // 12) // 2 * 2
        for index in range(spec.frames):
            left = (spec.width - bar_width) * index // max(1, spec.frames - 1) // 2 * 2
            _paint_bar(frame, left, bar_width, background, bar)
            frame.pts = index
            container.mux(video.encode(frame))
        container.mux(video.encode(None))
        if audio is not None:
            _encode_audio(container, audio, _repeat(tone, spec.seconds * _SOUNDTRACK_RATE), _SOUNDTRACK_RATE)


def render_music(spec: MusicSpec, path: Path) -> None:
    """A short seeded melody looped to the requested length, in the requested codec."""
    rng = random.Random(spec.seed)
    notes = [rng.choice(_SCALE) for _ in range(8)]
    note_s = rng.choice((0.25, 0.375, 0.5))
    loop = b"".join(_tone(spec.sample_rate, f, note_s, volume=0.3, fade=True) for f in notes)
    with av.open(str(path), "w", format=spec.container) as container:
        stream = container.add_stream(spec.codec, rate=spec.sample_rate, layout="mono")
        if spec.bit_rate:
            stream.bit_rate = spec.bit_rate
        _encode_audio(container, stream, _repeat(loop, round(spec.seconds * spec.sample_rate)), spec.sample_rate)


def probe_duration(path: Path) -> float:
    """Seconds of media in a file; raises ``ValueError`` when it is not audio or video."""
    try:
        with av.open(str(path)) as container:
            if container.duration:
                return container.duration / 1_000_000
            for stream in container.streams:
                if stream.duration and stream.time_base:
                    return float(stream.duration * stream.time_base)
    except av.error.FFmpegError as exc:
        raise ValueError(f"not a media file: {exc}") from exc
    raise ValueError("media file without a duration")


def _paint_bar(frame: av.VideoFrame, left: int, width: int, background: tuple[int, ...], bar: tuple[int, ...]) -> None:
    for index, plane in enumerate(frame.planes):
        shift = 0 if index == 0 else 1  # chroma planes are half size in yuv420p
        x, w = left >> shift, width >> shift
        row = bytes((background[index],)) * x + bytes((bar[index],)) * w
        row += bytes((background[index],)) * (plane.line_size - len(row))
        plane.update(row * plane.height)


def _encode_audio(container: av.container.OutputContainer, stream: av.AudioStream, chunks, rate: int) -> None:
    """Feed mono s16 chunks; PyAV converts them to the encoder's sample format and frame size."""
    pts = 0
    for chunk in chunks:
        samples = len(chunk) // 2
        frame = av.AudioFrame(format="s16", layout="mono", samples=samples)
        frame.planes[0].update(chunk)
        frame.sample_rate, frame.pts = rate, pts
        pts += samples
        container.mux(stream.encode(frame))
    container.mux(stream.encode(None))


def _repeat(loop: bytes, total_samples: int, chunk_samples: int = 32768):
    """``total_samples`` of mono s16 from a looped buffer, in chunks, without building it all."""
    if not loop:
        return
    data = loop * max(1, math.ceil(chunk_samples * 2 / len(loop)) + 1)
    offset, remaining = 0, total_samples
    while remaining > 0:
        count = min(chunk_samples, remaining)
        yield data[offset : offset + count * 2]
        offset = (offset + count * 2) % len(loop)
        remaining -= count


def _tone(rate: int, frequency: float, seconds: float, volume: float, fade: bool = False) -> bytes:
    count = int(rate * seconds)
    step = 2 * math.pi * frequency / rate
    amplitude = 32767 * volume
    ramp = max(1, int(rate * 0.01)) if fade else 0
    samples = array.array("h", bytes(count * 2))
    for i in range(count):
        envelope = min(1.0, i / ramp, (count - i) / ramp) if ramp else 1.0
        samples[i] = int(amplitude * envelope * math.sin(step * i))
    return samples.tobytes()


def _colour(rng: random.Random) -> tuple[int, int, int]:
    return rng.randrange(256), rng.randrange(256), rng.randrange(256)


def _mix(a: tuple[int, int, int], b: tuple[int, int, int], t: float) -> tuple[int, int, int]:
    return tuple(round(x + (y - x) * t) for x, y in zip(a, b))  # type: ignore[return-value]


def _yuv(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    """BT.601 limited-range conversion, what x264 assumes for yuv420p by default."""
    r, g, b = (c / 255 for c in rgb)
    y = 16 + 65.481 * r + 128.553 * g + 24.966 * b
    u = 128 - 37.797 * r - 74.203 * g + 112.0 * b
    v = 128 + 112.0 * r - 93.786 * g - 18.214 * b
    return tuple(int(min(255, max(0, round(c)))) for c in (y, u, v))  # type: ignore[return-value]
