"""A finished run's output JSON, in the shape each kind of fal model returns.

Files are rendered (or reused) through the ``FileStore``; transcription reads the audio when it is
reachable without the internet (the sim's own files, or anything on loopback) so that a gateway
test transcribing a file it generated gets a transcript as long as that file really is.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
from collections.abc import Mapping
from concurrent.futures import Executor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from tidehub.sim import artifacts, params
from tidehub.sim.errors import RunFailure
from tidehub.sim.files import FileStore, StoredFile
from tidehub.sim.models import SimModel
from tidehub.sim.transcripts import make_transcript

_LOOPBACK = {"127.0.0.1", "::1", "localhost"}
_MAX_DOWNLOAD = 512 * 1024 * 1024
_DOWNLOAD_FAILED = "Failed to download the file. Please check if the URL is accessible."


class OutputMaker:
    def __init__(self, files: FileStore, executor: Executor, scratch_dir: Path) -> None:
        self._files = files
        self._executor = executor
        self._scratch = scratch_dir
        self._own_host = urlsplit(files.base_url).hostname or ""
        self._http: aiohttp.ClientSession | None = None

    async def make(self, model: SimModel, inputs: Mapping[str, Any]) -> dict[str, Any]:
        """The output for one completed run; raises ``RunFailure`` when the run cannot succeed."""
        inputs = params.with_defaults(model, inputs)
        if model.capability == "image":
            return await self._images(model, inputs)
        if model.capability == "video":
            return await self._video(model, inputs)
        if model.capability == "audio":
            return await self._music(model, inputs)
        if model.capability == "transcribe":
            return await self._transcript(model, inputs)
        raise RunFailure.internal(f"the simulator cannot produce {model.capability!r} outputs")

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.close()

    async def _images(self, model: SimModel, inputs: Mapping[str, Any]) -> dict[str, Any]:
        specs = params.image_specs(model, inputs)
        stored = await asyncio.gather(*(self._obtain(spec, artifacts.render_image) for spec in specs))
        images = []
        for spec, file in zip(specs, stored):
            name = _file_name("image", file)
            images.append({
                "url": self._files.publish(file, name),
                "content_type": spec.content_type,
                "file_name": name,
                "file_size": file.size,
                "width": spec.width,
                "height": spec.height,
            })
        return {"images": images, "description": ""}

    async def _video(self, model: SimModel, inputs: Mapping[str, Any]) -> dict[str, Any]:
        spec = params.video_spec(model, inputs)
        file = await self._obtain(spec, artifacts.render_video)
        name = _file_name("video", file)
        video: dict[str, Any] = {
            "url": self._files.publish(file, name),
            "content_type": spec.content_type,
            "file_name": name,
            "file_size": file.size,
        }
        output: dict[str, Any] = {"video": video}
        if model.family == "wan":
            video.update(
                width=spec.width, height=spec.height, fps=spec.fps, duration=spec.seconds, num_frames=spec.frames
            )
        if model.family in ("wan", "seedance"):
            output["seed"] = spec.seed
        return output

    async def _music(self, model: SimModel, inputs: Mapping[str, Any]) -> dict[str, Any]:
        spec = params.music_spec(model, inputs)
        file = await self._obtain(spec, artifacts.render_music)
        name = _file_name("audio", file)
        return {
            "audio": {
                "url": self._files.publish(file, name),
                "content_type": spec.content_type,
                "file_name": name,
                "file_size": file.size,
            }
        }

    async def _transcript(self, model: SimModel, inputs: Mapping[str, Any]) -> dict[str, Any]:
        spec = params.transcript_spec(model, inputs)
        url_hash = int.from_bytes(hashlib.sha256(spec.audio_url.encode()).digest()[:4], "big")
        seconds = await self._audio_seconds(spec.audio_url)
        if seconds is None:
            seconds = 5.0 + url_hash % 2500 / 100  # 5..30 s, stable per URL
        return make_transcript(seconds, url_hash, spec.chunk_level, spec.language)

    async def _obtain(self, spec: params.MediaSpec, render) -> StoredFile:
        return await self._files.obtain(
            params.cache_key(spec), spec.extension, spec.content_type, lambda path: render(spec, path)
        )

    async def _audio_seconds(self, url: str) -> float | None:
        """Real duration of audio we can reach offline; None for the rest of the internet."""
        loop = asyncio.get_running_loop()
        local = self._files.path_for_url(url)
        if local is not None:
            return await loop.run_in_executor(self._executor, _probe, local)
        host = urlsplit(url).hostname or ""
        if host not in _LOOPBACK and host != self._own_host:
            return None
        scratch = self._scratch / f"download-{secrets.token_hex(8)}"
        try:
            await self._download(url, scratch)
            return await loop.run_in_executor(self._executor, _probe, scratch)
        finally:
            scratch.unlink(missing_ok=True)

    async def _download(self, url: str, target: Path) -> None:
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60))
        try:
            async with self._http.get(url) as response:
                if response.status != 200:
                    raise RunFailure.bad_file("audio_url", _DOWNLOAD_FAILED)
                size = 0
                with target.open("wb") as sink:
                    async for chunk in response.content.iter_chunked(1 << 16):
                        size += len(chunk)
                        if size > _MAX_DOWNLOAD:
                            raise RunFailure.bad_file("audio_url", "File is too large")
                        sink.write(chunk)
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
            raise RunFailure.bad_file("audio_url", _DOWNLOAD_FAILED) from exc


def _probe(path: Path) -> float:
    try:
        return artifacts.probe_duration(path)
    except ValueError as exc:
        raise RunFailure.bad_file("audio_url", "Unsupported or corrupt audio file", "audio_decode_error") from exc


def _file_name(kind: str, file: StoredFile) -> str:
    return f"{kind}-{file.key[:12]}{file.path.suffix}"
