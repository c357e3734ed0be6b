"""The console's pages, one module per area. Each module's ``routes(console)`` returns its routes,
every one made with ``security.page`` (which declares the roles that may open it)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.routing import BaseRoute

if TYPE_CHECKING:
    from tidehub.console.app import Console


def all_routes(console: "Console") -> list[BaseRoute]:
    from tidehub.console.pages import (accounts, audit, channels, codes, customer, dashboard, keys, models,
                                       playground, signin, tasks, webhooks)

    routes: list[BaseRoute] = []
    for module in (signin, dashboard, customer, accounts, keys, codes, channels, tasks, webhooks, models, playground, audit):
        routes.extend(module.routes(console))
    return routes
