"""A webhook receiver for tests: a real HTTP endpoint on 127.0.0.1."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from conftest import free_socket, wait_for


class Receiver:
    """A webhook endpoint on 127.0.0.1 that answers with the statuses it is told to, in order."""

    def __init__(self, statuses: list[int] | None = None) -> None:
        self.statuses = list(statuses or [])
        self.received: list[dict[str, Any]] = []
        self.sock = free_socket()
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/hook"

        async def hook(request: Request) -> Response:
            self.received.append({"headers": dict(request.headers), "body": await request.body()})
            status = self.statuses.pop(0) if self.statuses else 200
            return Response(status_code=status, headers={"Retry-After": "0"} if status == 429 else None)

        self.server = uvicorn.Server(uvicorn.Config(Starlette(routes=[Route("/hook", hook, methods=["POST"])]),
                                                    log_level="warning", lifespan="off"))
        self.thread = threading.Thread(target=lambda: asyncio.run(self.server.serve(sockets=[self.sock])), daemon=True)
        self.thread.start()
        wait_for(lambda: self.server.started, timeout=10)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
