"""Runtime control of a running sim, for tests and demos: read and turn the channels' knobs.

Unauthenticated on purpose (the sim is a test tool) and kept under ``/_sim`` so it can never be
mistaken for the vendor API.

- ``GET /_sim/channels`` -> ``{"channels": {key: {key, user_id, knobs}}}``
- ``GET /_sim/channels/{key}`` -> ``{key, user_id, knobs}`` (404 for an unknown key)
- ``PUT /_sim/channels/{key}`` with a JSON object of knob values: a partial update, all or nothing
  (422 names the bad knob); an unknown key adds a channel with those knobs (201).
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tidehub.sim.channels import Channels
from tidehub.sim.fal import json_response


class SimControl:
    def __init__(self, channels: Channels) -> None:
        self._channels = channels

    def routes(self) -> list[Route]:
        return [
            Route("/_sim/channels", self.list_channels, methods=["GET"]),
            Route("/_sim/channels/{key}", self.get_channel, methods=["GET"]),
            Route("/_sim/channels/{key}", self.put_channel, methods=["PUT"]),
        ]

    async def list_channels(self, request: Request) -> Response:
        return json_response({"channels": {channel.key: channel.describe() for channel in self._channels}})

    async def get_channel(self, request: Request) -> Response:
        channel = self._channels.get(request.path_params["key"])
        if channel is None:
            return json_response({"detail": "No such channel"}, 404)
        return json_response(channel.describe())

    async def put_channel(self, request: Request) -> Response:
        try:
            changes: Any = orjson.loads(await request.body() or b"{}")
        except orjson.JSONDecodeError:
            return json_response({"detail": "Body must be a JSON object of knob values"}, 400)
        if not isinstance(changes, dict):
            return json_response({"detail": "Body must be a JSON object of knob values"}, 400)
        try:
            channel, created = self._channels.configure(request.path_params["key"], changes)
        except ValueError as exc:
            return json_response({"detail": str(exc)}, 422)
        return json_response(channel.describe(), 201 if created else 200)
