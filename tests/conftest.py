"""Shared fixtures: the simulator and the gateway as real servers on free loopback ports.

Both run with time turned down (``SCALE``), so a "45 s" video finishes in about a second.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import httpx
import pytest
import sqlalchemy as sa
import uvicorn

from tidehub.app import create_app
from tidehub.config import Settings
from tidehub.core.auth import create_key
from tidehub.gateway import Gateway
from tidehub.server import uvicorn_config
from tidehub.sim.server import SimServer
from tidehub.sim.settings import SimSettings

SCALE = 0.02
SIM_KEY = "sim-key"


def wait_for(check: Callable[[], Any], timeout: float = 30.0, interval: float = 0.05, what: str = "condition") -> Any:
    """Poll ``check`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last value {value!r}")
        time.sleep(interval)


def free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


def free_port() -> int:
    with free_socket() as sock:
        return sock.getsockname()[1]


# -- databases ---------------------------------------------------------------------------------

def _postgres_server_url() -> str | None:
    return os.environ.get("TIDEHUB_TEST_DATABASE_URL") or None


def _fresh_postgres_database() -> str:
    """A new empty database on the test server, so tests never see each other's rows."""
    base = _postgres_server_url()
    if base is None:
        pytest.skip("PostgreSQL tests need TIDEHUB_TEST_DATABASE_URL (e.g. postgresql://postgres@127.0.0.1/test)")
    url = sa.engine.make_url(base.replace("postgresql://", "postgresql+psycopg://", 1))
    name = f"tidehub_t_{uuid.uuid4().hex[:12]}"
    try:
        admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        admin.dispose()
    except sa.exc.OperationalError as exc:
        pytest.skip(f"PostgreSQL at {base} is not reachable: {exc.orig}")
    return url.set(database=name).render_as_string(hide_password=False).replace("+psycopg", "")


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'tidehub.db'}"
    return _fresh_postgres_database()


# -- redis ---------------------------------------------------------------------------------------

def _redis_server_url() -> str:
    return os.environ.get("TIDEHUB_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture(scope="session")
def redis_server() -> str:
    """The test Redis (``TIDEHUB_TEST_REDIS_URL``, default the local one); skips where none answers."""
    import redis

    url = _redis_server_url()
    try:
        redis.Redis.from_url(url, socket_connect_timeout=1).ping()
    except (redis.RedisError, OSError) as exc:
        pytest.skip(f"Redis tests need a Redis server at {url} (TIDEHUB_TEST_REDIS_URL): {exc}")
    return url


@pytest.fixture
def redis_settings(redis_server: str) -> dict[str, Any]:
    """Gateway settings for Redis, under a key prefix of this test's own, so tests never share state."""
    return {"redis_url": redis_server, "redis_prefix": f"tidehub-test-{uuid.uuid4().hex[:8]}:"}


# -- the simulator ---------------------------------------------------------------------------

@pytest.fixture(scope="session")
def sim() -> Iterator[SimServer]:
    server = SimServer(SimSettings(port=0, api_key=SIM_KEY, time_scale=SCALE, seed=7))
    server.start()
    yield server
    server.stop()


# -- the gateway -----------------------------------------------------------------------------

class GatewayServer:
    """The gateway app under uvicorn in a background thread, on its own event loop."""

    def __init__(self, settings: Settings, sock: socket.socket) -> None:
        self.settings = settings
        self.sock = sock
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        self.gateway = Gateway.open(settings)
        self._server = uvicorn.Server(uvicorn_config(create_app(settings, self.gateway), "127.0.0.1", 0))
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.run(self._server.serve(sockets=[self.sock]))

    def start(self) -> "GatewayServer":
        self._thread.start()
        wait_for(lambda: self._server.started, timeout=20, what="gateway start")
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=20)
        self.sock.close()

    def new_key(self, name: str = "test", credits: int = 10**9, **limits: Any) -> str:
        return create_key(self.gateway.store, name=name, credits=credits, **limits).secret

    def client(self, key: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)


def gateway_settings(data_dir: Path, sim_url: str, database_url: str = "", **extra: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": data_dir,
        "database_url": database_url,
        "fal_base_url": sim_url,
        "fal_key": SIM_KEY,
        "openai_base_url": f"{sim_url}/v1",
        "openai_key": SIM_KEY,
        "time_scale": SCALE,
        "lease_s": 3,
        "relay_block_idle_s": 0.3,
        # The gateway fetches result files from the simulator: exactly its address may be reached.
        "ssrf_allow": sim_allowance(sim_url),
        **extra,
    }
    return Settings(**values)


def sim_allowance(sim_url: str) -> str:
    """The SSRF allow-list entry for the simulator at ``sim_url``: its address and port only."""
    parsed = httpx.URL(sim_url)
    return f"{parsed.host}:{parsed.port}"


@pytest.fixture
def make_gateway(tmp_path: Path, sim: SimServer) -> Iterator[Callable[..., GatewayServer]]:
    started: list[GatewayServer] = []

    def make(database_url: str = "", *, more_upstreams: bool = True, **extra: Any) -> GatewayServer:
        """A gateway on the sim: fal and OpenAI as implicit channels and, unless ``more_upstreams`` is
        off, Replicate, nexus and a Midjourney proxy as channels (so every catalog entry can run)."""
        sock = free_socket()
        port = sock.getsockname()[1]
        if more_upstreams:
            extra.setdefault("secret_key", "test-secret-key")
        settings = gateway_settings(tmp_path / f"data{len(started)}", sim.base_url, database_url,
                                    port=port, **extra)
        server = GatewayServer(settings, sock).start()
        if more_upstreams:
            for name, adapter, path in (("replicate", "replicate", "/replicate/v1"), ("nexus", "nexus", "/nexus"),
                                        ("mj-proxy", "midjourney", "/mj-proxy")):
                server.gateway.channels.add(name, adapter=adapter, base_url=sim.base_url + path, secret=SIM_KEY)
            server.gateway.router.reload()
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


@pytest.fixture
def gateway(make_gateway: Callable[..., GatewayServer]) -> GatewayServer:
    return make_gateway()


@pytest.fixture
def client(gateway: GatewayServer) -> Iterator[httpx.Client]:
    with gateway.client(gateway.new_key()) as c:
        yield c


def serve_process(port: int, data_dir: Path, env: dict[str, str], timeout: float = 120) -> subprocess.Popen:
    """`tidehub serve` as a real process (for tests that kill it), once it answers its health check.

    Its output goes to a file, not a pipe: a pipe nobody reads fills up and then blocks the gateway
    on its next log line.
    """
    output = tempfile.TemporaryFile()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tidehub", "serve", "--port", str(port), "--data-dir", str(data_dir)],
        env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=output,
    )

    def healthy() -> bool:
        if proc.poll() is not None:
            output.seek(0)
            raise AssertionError(f"gateway exited: {output.read().decode(errors='replace')[-3000:]}")
        try:
            return httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    # Generous: a busy machine can take many seconds to start a Python process and migrate.
    try:
        wait_for(healthy, timeout=timeout, interval=0.2, what="gateway health")
    except BaseException:
        proc.kill()  # never leave a gateway behind the test that gave up on it
        proc.wait(timeout=10)
        raise
    return proc


def wait_task(client: httpx.Client, path: str, done: Callable[[dict[str, Any]], bool], timeout: float = 60) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        body = client.get(path).json()
        return body if done(body) else None

    return wait_for(check, timeout=timeout, interval=0.1, what=f"{path} to finish")
