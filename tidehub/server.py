"""Running the gateway under uvicorn, and the demo: the simulator in the same process as upstream."""

from __future__ import annotations

import asyncio
import os
import sys

import uvicorn

from tidehub.app import create_app
from tidehub.config import Settings
from tidehub.core.auth import create_key
from tidehub.gateway import Gateway

SIM_KEY = "sim-key"
DEMO_CREDITS = 10_000_000  # $10,000 at 1 credit = $0.001: plenty to try every model


def uvicorn_config(app: object, host: str, port: int) -> uvicorn.Config:
    return uvicorn.Config(
        app, host=host, port=port, log_level="warning", access_log=False,
        loop="uvloop", http="httptools", lifespan="on", timeout_graceful_shutdown=5,
    )


async def run_gateway(settings: Settings, *, demo: bool = False) -> None:
    servers = []
    if demo:
        from tidehub.sim.server import serve_sim
        from tidehub.sim.settings import SimSettings

        sim = SimSettings(host="127.0.0.1", port=settings.sim_port, api_key=SIM_KEY,
                          time_scale=settings.sim_time_scale)
        servers.append(serve_sim(sim))
        settings = settings.model_copy(
            update={"fal_base_url": f"http://127.0.0.1:{settings.sim_port}", "fal_key": SIM_KEY}
        )
    gateway = Gateway.open(settings)
    if demo:
        _print_demo_banner(settings, _demo_key(gateway))
    server = uvicorn.Server(uvicorn_config(create_app(settings, gateway), settings.host, settings.port))
    servers.append(server.serve())
    await asyncio.gather(*servers)


def _demo_key(gateway: Gateway) -> str:
    """The demo's key survives restarts of the demo (kept in the data dir, readable by the owner only)."""
    path = gateway.settings.data_dir / "demo-key"
    if path.exists():
        secret = path.read_text().strip()
        from tidehub.core.auth import hash_key

        row = gateway.store.key_by_hash(hash_key(secret))
        if row and row["revoked_at"] is None:
            return secret
    key = create_key(gateway.store, name="demo", credits=DEMO_CREDITS)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(key.secret + "\n")
    return key.secret


def _print_demo_banner(settings: Settings, secret: str) -> None:
    base = settings.base_url
    print(
        f"""
Tidehub demo: gateway on {base}, simulated fal.ai upstream on http://127.0.0.1:{settings.sim_port}
Data in {settings.data_dir.resolve()}

API key (demo account, {DEMO_CREDITS:,} credits): {secret}

Try it:
TASK=$(curl -s -X POST {base}/hub/v1/image -H "Authorization: Bearer {secret}" -H "Content-Type: application/json" -d '{{"model": "nano-banana", "input": {{"prompt": "a lighthouse at dawn"}}}}' | grep -o 'hub-[0-9a-f-]*' | head -n1); echo $TASK
curl -s {base}/hub/v1/tasks/$TASK -H "Authorization: Bearer {secret}"
""",
        flush=True,
    )
    sys.stdout.flush()
