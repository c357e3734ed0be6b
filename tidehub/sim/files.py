"""Generated files on disk, shared by identical requests and handed out under expiring links.

Each distinct spec is rendered once (concurrent asks for the same spec wait on one render) and kept
while any link to it is alive. Every request gets its own link with its own clock, as fal's CDN
links do, so a gateway that does not mirror outputs promptly sees them disappear.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

Renderer = Callable[[Path], None]


@dataclass(slots=True, eq=False)
class StoredFile:
    key: str
    path: Path
    content_type: str
    size: int
    keep_until: float


@dataclass(slots=True, eq=False)
class _Link:
    file: StoredFile
    name: str
    expires_at: float


class FileStore:
    def __init__(
        self,
        root: Path,
        base_url: str,
        ttl_s: float,
        executor: Executor,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.root = root
        self.base_url = base_url.rstrip("/")
        self.ttl_s = ttl_s
        self.renders = 0
        self._executor = executor
        self._clock = clock
        self._files: dict[str, StoredFile] = {}
        self._pending: dict[str, asyncio.Future[StoredFile]] = {}
        self._links: dict[str, _Link] = {}
        self._link_expiry: deque[tuple[float, str]] = deque()
        root.mkdir(parents=True, exist_ok=True)

    async def obtain(self, key: str, extension: str, content_type: str, render: Renderer) -> StoredFile:
        """The file for ``key``, rendering it in the thread pool unless it exists or is under way."""
        stored = self._files.get(key)
        if stored is not None:
            # Keep it past the next sweep: the caller is about to publish a link to it.
            stored.keep_until = max(stored.keep_until, self._clock() + self.ttl_s)
            return stored
        pending = self._pending.get(key)
        if pending is None:
            pending = asyncio.ensure_future(self._render(key, extension, content_type, render))
            self._pending[key] = pending
            pending.add_done_callback(lambda _: self._pending.pop(key, None))
        return await asyncio.shield(pending)

    def publish(self, stored: StoredFile, name: str) -> str:
        """A fresh public URL for the file, alive for ``ttl_s`` from now."""
        token = secrets.token_urlsafe(12)
        expires_at = self._clock() + self.ttl_s
        self._links[token] = _Link(stored, name, expires_at)
        self._link_expiry.append((expires_at, token))
        stored.keep_until = max(stored.keep_until, expires_at)
        return f"{self.base_url}/files/{token}/{name}"

    def lookup(self, token: str, name: str) -> StoredFile | None:
        """The file behind a live link, or None once it has expired (or never existed)."""
        link = self._links.get(token)
        if link is None or link.name != name or link.expires_at <= self._clock():
            return None
        return link.file

    def path_for_url(self, url: str) -> Path | None:
        """The local file behind one of our own URLs, so the sim can read its outputs without HTTP."""
        prefix = f"{self.base_url}/files/"
        if not url.startswith(prefix):
            return None
        token, _, name = urlsplit(url).path.rpartition("/files/")[2].partition("/")
        stored = self.lookup(token, unquote(name))
        return stored.path if stored is not None else None

    def sweep(self) -> int:
        """Forget expired links and delete files no live link points at; returns files deleted."""
        now = self._clock()
        while self._link_expiry and self._link_expiry[0][0] <= now:
            _, token = self._link_expiry.popleft()
            self._links.pop(token, None)
        expired = [f for f in self._files.values() if f.keep_until <= now and f.key not in self._pending]
        for stored in expired:
            del self._files[stored.key]
            stored.path.unlink(missing_ok=True)
        return len(expired)

    def clear(self) -> None:
        for stored in self._files.values():
            stored.path.unlink(missing_ok=True)
        self._files.clear()
        self._links.clear()
        self._link_expiry.clear()

    @property
    def file_count(self) -> int:
        return len(self._files)

    @property
    def link_count(self) -> int:
        return len(self._links)

    async def _render(self, key: str, extension: str, content_type: str, render: Renderer) -> StoredFile:
        path = self.root / f"{key}{extension}"
        loop = asyncio.get_running_loop()
        rendered = await loop.run_in_executor(self._executor, _render_atomically, render, path)
        self.renders += rendered
        stored = StoredFile(key, path, content_type, path.stat().st_size, self._clock() + self.ttl_s)
        self._files[key] = stored
        return stored


def _render_atomically(render: Renderer, path: Path) -> int:
    """Render next to ``path`` and move into place, so a reader never sees half a file.

    Returns 1 when it rendered, 0 when the file was already on disk (a reused work directory).
    """
    if path.exists():
        return 0
    partial = path.with_name(f"{path.stem}.{secrets.token_hex(4)}.part{path.suffix}")
    try:
        render(partial)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return 1
