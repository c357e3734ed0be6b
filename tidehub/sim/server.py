"""Ways to run the simulator: inside a running event loop, on a background thread, or blocking.

The socket is bound before the app is built so that a sim asked for port 0 knows its real port and
puts it in every URL it hands out.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette

from tidehub.sim.app import SimRuntime, create_sim_app
from tidehub.sim.behaviour import SimBehaviour
from tidehub.sim.settings import SimSettings


class _SimUvicorn(uvicorn.Server):
    """uvicorn waits for open requests before it stops: first let go of the ones the sim holds."""

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        app = self.config.app
        if isinstance(app, Starlette):
            app.state.sim.stopping.set()
        await super().shutdown(sockets)


class _EmbeddedServer(_SimUvicorn):
    """A uvicorn server that leaves signal handling to its host process or thread."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def serve_sim(settings: SimSettings, *, ready: asyncio.Future[str] | None = None,
                    sock: socket.socket | None = None) -> None:
    """Serve the sim in the current event loop until cancelled (e.g. inside the gateway's demo).

    ``ready``, when given, receives the base URL once connections are accepted; with ``port=0``
    that is the only way to learn which port was picked. ``sock``: a socket bound already (by a
    caller that wants a taken port to fail before anything else starts).
    """
    sock = sock or bind_socket(settings.host, settings.port)
    settings = replace(settings, port=sock.getsockname()[1])
    server = _EmbeddedServer(_config(create_sim_app(settings)))
    serving = asyncio.ensure_future(server.serve(sockets=[sock]))
    try:
        if ready is not None:
            while not server.started and not serving.done():
                await asyncio.sleep(0.01)
            if server.started and not ready.done():
                ready.set_result(settings.base_url)
        await asyncio.shield(serving)
    except asyncio.CancelledError:
        server.should_exit = True
        await serving
        raise
    finally:
        sock.close()


class SimServer:
    """A sim on its own thread and event loop, for tests and synchronous scripts.

    >>> sim = SimServer(time_scale=0.02)
    >>> base_url = sim.start()
    >>> ...
    >>> sim.stop()

    Also a context manager. ``runtime`` exposes the live state (counters, behaviour knobs).
    Several channels: ``SimServer(channels={"key-a": SimBehaviour(...), "key-b": SimBehaviour(...)})``.
    """

    def __init__(self, settings: SimSettings | None = None, **overrides: Any) -> None:
        base = settings if settings is not None else SimSettings(port=0)
        self.settings = replace(base, **overrides)
        self.app: Starlette | None = None
        self._server: _EmbeddedServer | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        return self.settings.base_url

    base_url = url

    @property
    def runtime(self) -> SimRuntime:
        if self.app is None:
            raise RuntimeError("the sim has not been started")
        return self.app.state.sim

    def start(self, timeout: float = 15.0) -> str:
        """Start serving and return the base URL once the server accepts connections."""
        if self._thread is not None:
            return self.url
        sock = bind_socket(self.settings.host, self.settings.port)
        self.settings = replace(self.settings, port=sock.getsockname()[1])
        self.app = create_sim_app(self.settings)
        self._server = _EmbeddedServer(_config(self.app))
        self._thread = threading.Thread(target=self._run, args=(sock,), name="tidehub-sim", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError("the sim failed to start") from self._error
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError("the sim did not start in time")
            time.sleep(0.005)
        return self.url

    def stop(self, timeout: float = 15.0) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
        self._thread = None

    def __enter__(self) -> SimServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _run(self, sock: socket.socket) -> None:
        assert self._server is not None
        try:
            with asyncio.Runner(loop_factory=_loop_factory()) as runner:
                runner.run(self._server.serve(sockets=[sock]))
        except BaseException as exc:  # surfaced by start()
            self._error = exc
        finally:
            sock.close()


def run_sim(
    host: str = "127.0.0.1",
    port: int = 8790,
    time_scale: float = 1.0,
    *,
    api_key: str = "sim-key",
    public_url: str | None = None,
    file_ttl_s: float = 3600.0,
    catalog_dirs: Iterable[Path | str] = (),
    work_dir: Path | str | None = None,
    log_level: str = "info",
    channels: Mapping[str, SimBehaviour] | None = None,
) -> None:
    """Serve the sim in the foreground until interrupted (the ``tidehub sim`` command)."""
    settings = SimSettings(
        host=host,
        port=port,
        public_url=public_url,
        api_key=api_key,
        time_scale=time_scale,
        file_ttl_s=file_ttl_s,
        catalog_dirs=[Path(p) for p in catalog_dirs],
        work_dir=Path(work_dir) if work_dir else None,
        channels=dict(channels or {}),
    )
    sock = bind_socket(host, port)
    settings = replace(settings, port=sock.getsockname()[1])
    server = _SimUvicorn(_config(create_sim_app(settings), log_level=log_level))
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(server.serve(sockets=[sock]))


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening-ready TCP socket on ``host:port`` (port 0 picks a free one)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"{exc.strerror}: {host}:{port}") from None  # which address, for the operator
    sock.set_inheritable(True)
    return sock


def _config(app: Starlette, log_level: str = "warning") -> uvicorn.Config:
    return uvicorn.Config(app, log_level=log_level, access_log=False, lifespan="on", backlog=4096)


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop
