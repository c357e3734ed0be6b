"""Running the gateway under uvicorn, and the demo: the simulator in the same process as upstream."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sys
import tempfile

import uvicorn

from tidehub.app import create_app
from tidehub import logs
from tidehub.config import Settings
from tidehub.core.auth import create_key
from tidehub.gateway import Gateway

SIM_KEY = "sim-key"
DEMO_CREDITS = 10_000_000  # $10,000 at 1 credit = $0.001: plenty to try every model


def uvicorn_config(app: object, host: str, port: int) -> uvicorn.Config:
    return uvicorn.Config(
        # log_config=None: uvicorn's lines go through the handler tidehub.logs set up (JSON or text).
        app, host=host, port=port, log_level="warning", access_log=False, log_config=None,
        loop="uvloop", http="httptools", lifespan="on", timeout_graceful_shutdown=5,
    )


# The demo's upstream accounts, all on the simulator (``path`` is under its URL): three fal accounts,
# two sharing the traffic and a backup; an OpenAI account; Replicate; and the nexus aggregator, which
# backs up OpenAI and Google models and alone sells Midjourney.
DEMO_CHANNELS = (
    {"name": "sim-primary", "adapter": "fal", "path": "", "secret": "sim-key-primary", "priority": 10, "weight": 2,
     "max_concurrency": 200},
    {"name": "sim-secondary", "adapter": "fal", "path": "", "secret": "sim-key-secondary", "priority": 10,
     "weight": 1, "max_concurrency": 100},
    {"name": "sim-backup", "adapter": "fal", "path": "", "secret": "sim-key-backup", "priority": 0, "weight": 1},
    {"name": "sim-openai", "adapter": "openai", "path": "/v1", "secret": "sim-key-openai", "priority": 10},
    {"name": "sim-replicate", "adapter": "replicate", "path": "/replicate/v1", "secret": "sim-key-replicate",
     "priority": 5},
    {"name": "sim-nexus", "adapter": "nexus", "path": "/nexus", "secret": "sim-key-nexus", "priority": 0},
)


async def run_gateway(settings: Settings, *, demo: bool = False) -> None:
    servers = []
    if demo:
        from tidehub.sim.server import bind_socket, serve_sim

        sim = _demo_sim(settings)
        # Bound first: a port in use stops the demo before anything else starts.
        servers.append(serve_sim(sim, sock=bind_socket(sim.host, sim.port)))
        settings = demo_settings(settings)
    gateway = Gateway.open(settings)
    if demo:
        _demo_setup(gateway)
    server = uvicorn.Server(uvicorn_config(create_app(settings, gateway, settle_heap=True), settings.host, settings.port))
    servers.append(server.serve())
    await asyncio.gather(*servers)


def _demo_sim(settings: Settings):  # type: ignore[no-untyped-def]
    from tidehub.sim.settings import SimSettings

    sim = SimSettings(host="127.0.0.1", port=settings.sim_port, api_key=SIM_KEY, time_scale=settings.sim_time_scale)
    sim.channels = {c["secret"]: sim.make_behaviour() for c in DEMO_CHANNELS}
    return sim


def _demo_setup(gateway: Gateway) -> None:
    """The demo's channels, key and operator (once, whatever the number of processes), and its banner."""
    settings = gateway.settings
    sim_url = f"http://127.0.0.1:{settings.sim_port}"
    for channel in DEMO_CHANNELS:
        if not any(row["name"] == channel["name"] for row in gateway.store.channels.list()):
            spec = dict(channel)
            gateway.channels.add(spec.pop("name"), base_url=sim_url + spec.pop("path"), **spec)
    gateway.router.reload()
    _print_demo_banner(settings, _demo_key(gateway), _demo_operator(gateway))


# -- several processes ---------------------------------------------------------------------------

# The parent hands its settings (flags, environment and demo alike) to its worker processes here.
WORKER_SETTINGS = "TIDEHUB_WORKER_SETTINGS"


def serve_workers(settings: Settings, *, workers: int, demo: bool = False) -> None:
    """``serve --workers N``: N processes accepting on one listening socket (uvicorn's supervisor,
    which restarts a worker that dies). Whatever must happen once (the migrations, the demo's
    simulator and setup) happens here in the parent; each worker is a whole gateway over the shared
    database, and the database's leases and compare-and-sets keep every guarantee across them."""
    sim = None
    metrics_dir = tempfile.mkdtemp(prefix="tidehub-metrics-")
    # prometheus-client's multi-process mode: each worker writes its samples under this directory.
    # A fresh one each start, as stale files from an earlier run would add to this run's counters.
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    try:
        if demo:
            from tidehub.sim.server import SimServer

            sim = SimServer(_demo_sim(settings))
            sim.start()
            settings = demo_settings(settings)
        setup = Gateway.open(settings.model_copy(update={"engine_enabled": False}))  # migrates once
        try:
            if demo:
                _demo_setup(setup)
        finally:
            asyncio.run(setup.close())
        os.environ[WORKER_SETTINGS] = settings.model_dump_json()
        uvicorn.run(
            "tidehub.server:worker_app", factory=True, workers=workers, host=settings.host, port=settings.port,
            log_level="warning", access_log=False, loop="uvloop", http="httptools", lifespan="on",
            timeout_graceful_shutdown=5,
        )
    finally:
        os.environ.pop(WORKER_SETTINGS, None)
        if sim is not None:
            sim.stop()
        shutil.rmtree(metrics_dir, ignore_errors=True)


def worker_app():  # type: ignore[no-untyped-def]
    """The app factory each worker process of ``serve --workers N`` builds its gateway with."""
    settings = Settings.model_validate_json(os.environ[WORKER_SETTINGS])
    logs.configure(settings.log_format)  # the parent checked the format
    return create_app(settings, settle_heap=True)


async def run_engine(settings: Settings) -> None:
    """``tidehub worker``: the engine alone (steps, sweeps, webhook deliveries), no HTTP. It runs
    the app's own life cycle, so its wiring is exactly that of ``serve``; SIGTERM or SIGINT stops it."""
    app = create_app(settings.model_copy(update={"engine_enabled": True}), settle_heap=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with app.router.lifespan_context(app):
        await stop.wait()


def demo_settings(settings: Settings) -> Settings:
    """The demo's settings: callbacks from the simulator, and the simulator's port (only it, not
    every loopback port) as the one private address Tidehub may fetch from."""
    sim_url = f"http://127.0.0.1:{settings.sim_port}"
    allow = ",".join(part for part in (settings.ssrf_allow, f"127.0.0.1:{settings.sim_port}") if part)
    return settings.model_copy(update={
        "secret_key": settings.secret_key or _demo_secret(settings),
        "upstream_callbacks": True,
        "fal_jwks_url": f"{sim_url}/.well-known/jwks.json",
        "ssrf_allow": allow,
    })


def _demo_secret(settings: Settings) -> str:
    """The demo's credential key, made once and kept in the data dir (owner-readable only)."""
    import secrets

    path = settings.data_dir / "demo-secret-key"
    if not path.exists():
        settings.make_data_dir()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(32))
    return path.read_text().strip()


def _demo_key(gateway: Gateway) -> str:
    """The demo's key survives restarts of the demo (kept in the data dir, readable by the owner only)."""
    path = gateway.settings.data_dir / "demo-key"
    if path.exists():
        secret = path.read_text().strip()
        from tidehub.core.auth import hash_key

        row = gateway.store.keys.by_hash(hash_key(secret))
        if row and row["revoked_at"] is None:
            return secret
    key = create_key(gateway.store, name="demo", credits=DEMO_CREDITS)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(key.secret + "\n")
    return key.secret


DEMO_OPERATOR = "admin"


def _demo_operator(gateway: Gateway) -> str:
    """The demo's console operator ``admin``: its password is kept in the data dir like the demo
    key (owner-readable only), and made again if the one kept there no longer signs in."""
    path = gateway.settings.data_dir / "demo-admin-password"
    service = gateway.operators
    if path.exists():
        password = path.read_text().strip()
        if service.verify(DEMO_OPERATOR, password) is not None:
            return password
    if service.store.operators.by_name(DEMO_OPERATOR) is None:
        _, password = service.create(DEMO_OPERATOR, "admin")
    else:
        password = service.reset_password(DEMO_OPERATOR)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(password + "\n")
    return password


def _print_demo_banner(settings: Settings, secret: str, admin_password: str) -> None:
    base = settings.base_url
    print(
        f"""
Tidehub demo: gateway on {base}, simulated upstreams (fal.ai, OpenAI, Replicate, nexus) on
http://127.0.0.1:{settings.sim_port}; `tidehub channels list` shows the channels and their health
Data in {settings.data_dir.resolve()}

API key (demo account, {DEMO_CREDITS:,} credits): {secret}
Console: {base}/console/  (operator {DEMO_OPERATOR!r}, password {admin_password}; or sign in with the API key)

Try it:
TASK=$(curl -s -X POST {base}/hub/v1/image -H "Authorization: Bearer {secret}" -H "Content-Type: application/json" -d '{{"model": "nano-banana", "input": {{"prompt": "a lighthouse at dawn"}}}}' | grep -o 'hub-[0-9a-f-]*' | head -n1); echo $TASK
curl -s {base}/hub/v1/tasks/$TASK -H "Authorization: Bearer {secret}"
curl -s {base}/v1/chat/completions -H "Authorization: Bearer {secret}" -H "Content-Type: application/json" -d '{{"model": "gpt-4", "messages": [{{"role": "user", "content": "hello"}}]}}'
""",
        flush=True,
    )
    sys.stdout.flush()
