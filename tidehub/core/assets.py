"""Generated files: copied from the upstream into Tidehub's storage, served from unguessable URLs,
swept after the retention period.

Upstream links expire (fal's within days, the simulator's within the hour); the copy is what the
client keeps for two weeks. The URLs come from the upstream's answer, which Tidehub does not
control (an aggregator is a third party), so they are fetched through the SSRF guard: a result
at a private, loopback or metadata address fails the task, and nothing of it is copied.

Files are written, decoded and removed in worker threads: a result can be gigabytes, and a disk
write on the event loop would hold every other request of the process for as long as it takes.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import mimetypes
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any, Callable
from urllib.parse import unquote, urlsplit

import aiohttp

from tidehub.config import Settings
from tidehub.core import ids
from tidehub.core.ports import UpstreamError
from tidehub.core.ssrf import BlockedURL, URLGuard
from tidehub.store import Store

_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


#: How much of a result file is gathered in memory before it is written out.
WRITE_BYTES = 4 * 1024 * 1024


class AssetStore:
    def __init__(self, store: Store, settings: Settings, guard: URLGuard) -> None:
        self.store = store
        self.guard = guard
        self.root = settings.asset_dir
        self.base_url = settings.files_base_url
        self.retention_s = settings.asset_retention_days * 86400
        self.max_bytes = settings.max_asset_bytes
        self._session: aiohttp.ClientSession | None = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = self.guard.session(
                field="its URL", timeout=aiohttp.ClientTimeout(total=600, sock_connect=10, sock_read=60))
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def path_of(self, token: str, name: str) -> Path:
        return self.root / token[:2] / token / name

    async def mirror(self, task_id: str, output: Any, auth_for: Callable[[str], dict[str, str]] | None = None
                     ) -> tuple[Any, list[dict[str, Any]]]:
        """Download every ``url`` in ``output`` (``data:`` URLs are decoded); return the output
        pointing at the copies, and the asset rows to record with the task's completion (in the
        same transaction). ``auth_for`` gives the headers a URL of the upstream's own needs."""
        found: list[dict[str, Any]] = []
        _collect_files(output, found)
        results = await asyncio.gather(*(self._fetch(task_id, f, auth_for) for f in found), return_exceptions=True)
        failed = next((r for r in results if isinstance(r, BaseException)), None)
        if failed is not None:
            # All or nothing: the task fails or is tried again, so the copies made would be orphans.
            await self.discard([row for row in results if isinstance(row, dict)])
            raise failed
        rows: list[dict[str, Any]] = results  # type: ignore[assignment]
        for item, row in zip(found, rows):
            item["url"] = f"{self.base_url}/files/{row['token']}/{row['name']}"
            item.setdefault("content_type", row["content_type"])
            item["file_size"] = row["size"]
        return output, list(rows)

    async def record(self, rows: list[dict[str, Any]]) -> None:
        """Make mirrored files servable now, on their own (a task's rows go with its completion
        instead). If the rows cannot be written, the copies go too: no URL to them was handed out."""
        if not rows:
            return
        try:
            await self.store.call(self.store.assets.insert, rows)
        except Exception:
            await self.discard(rows)
            raise

    async def discard(self, rows: list[dict[str, Any]]) -> None:
        """Remove copies no task will own (a copy half done, or a task that ended otherwise meanwhile)."""
        await asyncio.to_thread(_remove, [self.path_of(row["token"], row["name"]).parent for row in rows])

    async def _fetch(self, task_id: str, item: dict[str, Any],
                     auth_for: Callable[[str], dict[str, str]] | None) -> dict[str, Any]:
        url = item["url"]
        token = ids.token(24)
        if url.startswith("data:"):
            return await asyncio.to_thread(self._decode, task_id, item, token)
        name = _file_name(item, url)
        path = self.path_of(token, name)
        size = 0
        try:
            async with self._http().get(url, headers=auth_for(url) if auth_for else None) as resp:
                if resp.status != 200:
                    raise UpstreamError(
                        f"could not fetch the result file {url}: HTTP {resp.status}",
                        code="asset_fetch_failed",
                        retryable=resp.status >= 500 or resp.status == 429,
                    )
                content_type = item.get("content_type") or resp.content_type or _guess_type(name)
                # Chunks are gathered up to WRITE_BYTES and written from a worker thread: a file of
                # a few megabytes costs one hop off the loop (open, write, close), not one per chunk.
                buffered: list[bytes] = []
                pending = 0
                fh = None
                try:
                    async for chunk in resp.content.iter_chunked(256 * 1024):
                        size += len(chunk)
                        if size > self.max_bytes:
                            raise UpstreamError("result file exceeds the size limit", code="asset_too_large")
                        buffered.append(chunk)
                        pending += len(chunk)
                        if pending >= WRITE_BYTES:
                            fh = await asyncio.to_thread(self._write, fh, path, buffered)
                            buffered, pending = [], 0
                    last, fh = fh, None  # closed by the write below, whatever comes of it
                    await asyncio.to_thread(self._write, last, path, buffered, close=True)
                finally:
                    if fh is not None:
                        await asyncio.to_thread(fh.close)
        except BlockedURL as exc:
            await asyncio.to_thread(_remove, [path.parent])
            # The upstream pointed at an address Tidehub must not reach: asking again will not help.
            raise UpstreamError(f"the upstream answered with a result file Tidehub may not fetch: {exc.message}",
                                code="asset_url_refused") from None
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            await asyncio.to_thread(_remove, [path.parent])
            raise UpstreamError(f"could not fetch the result file {url}: {exc}",
                                code="asset_fetch_failed", retryable=True) from None
        except BaseException:
            # Shielded: a cancelled copy still removes what it wrote.
            await asyncio.shield(asyncio.to_thread(_remove, [path.parent]))
            raise
        return self._row(task_id, token, path, name, content_type, size, url)

    def _write(self, fh: Any, path: Path, chunks: list[bytes], *, close: bool = False) -> Any:
        """Runs in a worker thread: ``chunks`` written to the file (made first, with its
        directories, when ``fh`` is None); the open file, or None once closed."""
        if fh is None:
            self._make_dir(path.parent)
            fh = _create(path)
        try:
            for chunk in chunks:
                fh.write(chunk)
        except BaseException:
            fh.close()
            raise
        if close:
            fh.close()
            return None
        return fh

    def _decode(self, task_id: str, item: dict[str, Any], token: str) -> dict[str, Any]:
        """A ``data:<type>;base64,...`` URL (images some upstreams return inline) as a file; runs
        in a worker thread (decoding megabytes of base64 is CPU work)."""
        head, _, payload = item["url"].partition(",")
        content_type = head[5:].split(";")[0] or "application/octet-stream"
        try:
            data = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise UpstreamError("the upstream returned a malformed inline file", code="asset_fetch_failed") from None
        if len(data) > self.max_bytes:
            raise UpstreamError("result file exceeds the size limit", code="asset_too_large")
        extension = mimetypes.guess_extension(content_type) or ".bin"
        name = _SAFE_NAME.sub("_", str(item.get("file_name") or f"output{extension}"))[:120]
        path = self.path_of(token, name)
        self._make_dir(path.parent)
        with _create(path) as fh:
            fh.write(data)
        return self._row(task_id, token, path, name, content_type, len(data), "data:")

    def _make_dir(self, directory: Path) -> None:
        # Owner-only at every level (mkdir -p would give the levels above the default mode). The
        # file's own directory is new (its token is); the levels above it mostly exist already.
        try:
            directory.mkdir(mode=0o700)
        except FileNotFoundError:
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
            directory.parent.mkdir(mode=0o700, exist_ok=True)
            directory.mkdir(mode=0o700, exist_ok=True)

    def _row(self, task_id: str, token: str, path: Path, name: str, content_type: str, size: int,
             source_url: str) -> dict[str, Any]:
        now = time.time()
        return {
            "token": token,
            "task_id": task_id,
            "name": name,
            "path": str(path.relative_to(self.root)),
            "content_type": content_type,
            "size": size,
            "source_url": source_url,
            "created_at": now,
            "expires_at": now + self.retention_s,
        }

    async def sweep(self) -> int:
        """Delete files past their retention; returns how many went."""
        removed = 0
        while True:
            expired = await self.store.call(self.store.assets.expired, time.time())
            if not expired:
                return removed
            await asyncio.to_thread(_remove, [(self.root / row["path"]).parent for row in expired])
            await self.store.call(self.store.assets.delete, [r["token"] for r in expired])
            removed += len(expired)


def _collect_files(value: Any, found: list[dict[str, Any]]) -> None:
    if isinstance(value, dict):
        url = value.get("url")
        if isinstance(url, str) and url.startswith(("http://", "https://", "data:")):
            found.append(value)
        for child in value.values():
            if isinstance(child, (dict, list)):
                _collect_files(child, found)
    elif isinstance(value, list):
        for child in value:
            _collect_files(child, found)


def _remove(directories: list[Path]) -> None:
    """Runs in a worker thread: each file's own directory, with the file in it."""
    for directory in directories:
        shutil.rmtree(directory, ignore_errors=True)


def _create(path: Path) -> Any:
    """A new result file, readable by the owner only."""
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb")


def _file_name(item: dict[str, Any], url: str) -> str:
    raw = item.get("file_name") or unquote(urlsplit(url).path.rsplit("/", 1)[-1]) or "file"
    name = _SAFE_NAME.sub("_", str(raw)).strip("._") or "file"
    return name[:120]


def _guess_type(name: str) -> str:
    return mimetypes.guess_type(name)[0] or "application/octet-stream"
