"""The router (core/routing.py) on its own: channels stored through ChannelService in a real
SQLite store (credentials encrypted), adapters that only remember how they were made (the router
never calls them), and two small catalog entries. Fast, no network."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

import pytest

from tidehub.catalog import Catalog
from tidehub.catalog.models import Endpoint
from tidehub.catalog.pricing import PriceRule
from tidehub.core.channels import Channel, ChannelService
from tidehub.core.health import BreakerPolicy
from tidehub.core.ports import UpstreamError
from tidehub.core.routing import Router
from tidehub.core.secrets_box import SecretBox
from tidehub.store import Store
from tidehub.store.schema import metadata


def endpoint(slug: str, upstream: dict[str, dict[str, Any]]) -> Endpoint:
    return Endpoint(slug=slug, model=slug, hub_ids=(slug,), capability="chat", mode="sync", vendor="test",
                    title="", description="", tags=(), upstream=upstream, timing={}, input_schema={},
                    output_schema={}, examples=[], price=PriceRule({"unit": "request", "credits": 1}))


CHAT = endpoint("test/chat", {"openai": {"model": "up-chat"}, "fal": {"model": "fal/chat"}})
IMAGE = endpoint("test/image", {"fal": {"model": "fal/image"}})


class Adapter:
    def __init__(self, base_url: str, secret: str, **options: Any) -> None:
        self.base_url, self.secret, self.options = base_url, secret, options

    async def close(self) -> None:
        pass


class RelayAdapter(Adapter):
    async def call(self) -> None:  # what the relay looks for
        pass


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    store = Store(f"sqlite:///{tmp_path / 'router.db'}", run_migrations=False)
    metadata.create_all(store.engine)
    yield store
    store.close()


@pytest.fixture
def channels(store: Store) -> ChannelService:
    return ChannelService(store, Catalog([CHAT, IMAGE]), SecretBox("router-test"),
                          {"openai": RelayAdapter, "fal": Adapter})


def router(channels: ChannelService, *specs: dict[str, Any], implicit: tuple[Channel, ...] = ()) -> Router:
    for spec in specs:
        spec = {"adapter": "openai", "base_url": f"http://{spec['name']}.test", **spec}
        channels.add(spec.pop("name"), **spec)
    return Router(channels, implicit, BreakerPolicy(consecutive_failures=2, cool_down_s=1000))


def picks(r: Router, n: int = 1, **kwargs: Any) -> Counter[str]:
    counted: Counter[str] = Counter()
    for _ in range(n):
        route = r.pick(CHAT, **kwargs)
        counted[route.channel.name if route else None] += 1
    return counted


def cid(r: Router, name: str) -> str:
    return next(c.id for c in r.channels.values() if c.name == name)


def test_the_highest_priority_wins_while_it_can_take_the_task(channels: ChannelService) -> None:
    r = router(channels, {"name": "main", "priority": 10, "max_concurrency": 2}, {"name": "spare", "priority": 0})
    assert picks(r, 20) == {"main": 20}
    main = cid(r, "main")
    assert picks(r, 5, in_flight={main: 1}) == {"main": 5}
    assert picks(r, 5, in_flight={main: 2}) == {"spare": 5}  # at its limit: the next tier


def test_weights_share_a_tier(channels: ChannelService) -> None:
    random.seed(7)
    r = router(channels, {"name": "big", "weight": 3}, {"name": "small", "weight": 1},
               {"name": "off", "weight": 100, "enabled": False})
    counted = picks(r, 4000)
    assert set(counted) == {"big", "small"}
    assert 0.70 < counted["big"] / 4000 < 0.80


def test_a_channel_that_failed_the_task_is_avoided_while_another_exists(channels: ChannelService) -> None:
    r = router(channels, {"name": "a", "priority": 5}, {"name": "b"})
    a, b = cid(r, "a"), cid(r, "b")
    assert picks(r, 10, exclude=[a]) == {"b": 10}
    assert picks(r, 10, exclude=[a, b]) == {"a": 10}  # all failed it once: try again by priority


def test_a_channel_at_its_limit_leaves_the_task_waiting(channels: ChannelService) -> None:
    r = router(channels, {"name": "only", "max_concurrency": 1})
    assert r.pick(CHAT, in_flight={cid(r, "only"): 1}) is None  # not an error: the task waits its turn
    assert r.pick(CHAT, in_flight={cid(r, "only"): 0}).channel.name == "only"


def test_a_per_minute_budget_is_spent_by_picks(channels: ChannelService) -> None:
    r = router(channels, {"name": "metered", "priority": 1, "rpm": 3}, {"name": "other"})
    assert [r.pick(CHAT).channel.name for _ in range(5)] == ["metered"] * 3 + ["other"] * 2


def test_an_open_breaker_keeps_a_channel_out_and_one_probe_lets_it_back(channels: ChannelService) -> None:
    r = router(channels, {"name": "flaky", "priority": 1}, {"name": "steady"})
    flaky = cid(r, "flaky")
    r.record(flaky, False)
    r.record(flaky, False)
    assert r.is_broken(flaky) and picks(r, 10) == {"steady": 10}
    health = r.health[flaky]
    health.opened_at -= 1000  # the cool-down is over
    probe = r.pick(CHAT)
    assert probe.channel.name == "flaky" and probe.probe
    assert picks(r, 5) == {"steady": 5}  # one probe at a time
    r.release(probe)  # it ended with no outcome (a 429, say): the next request may probe
    again = r.pick(CHAT)
    assert again.channel.name == "flaky" and again.probe
    r.record(flaky, True)
    assert not r.is_broken(flaky) and picks(r, 5) == {"flaky": 5}


def test_what_a_channel_serves_and_under_which_upstream_model(channels: ChannelService) -> None:
    r = router(channels,
               {"name": "renamed", "models": {"test/chat": "my-chat-deployment"}},
               {"name": "everything"},
               {"name": "images", "adapter": "fal", "models": ["test/image"]},
               {"name": "off", "enabled": False})
    served = {c.name: model for c, model in r.serving(CHAT)}
    assert served == {"renamed": "my-chat-deployment", "everything": "up-chat"}
    assert {c.name: model for c, model in r.serving(IMAGE)} == {"images": "fal/image"}
    route = r.pick(IMAGE)
    assert route.model == "fal/image" and route.spec == {"model": "fal/image"}
    with pytest.raises(UpstreamError) as none:
        r.pick(endpoint("test/nobody", {"replicate": {"model": "x"}}))
    assert none.value.code == "no_channel"


def test_a_caller_can_ask_for_adapters_that_can_do_something(channels: ChannelService) -> None:
    r = router(channels, {"name": "fal-chat", "adapter": "fal", "priority": 9}, {"name": "openai-chat"})
    assert r.pick(CHAT).channel.name == "fal-chat"
    relay = lambda adapter: hasattr(adapter, "call")  # noqa: E731
    assert picks(r, 5, able=relay) == {"openai-chat": 5}
    with pytest.raises(UpstreamError):
        r.pick(IMAGE, able=relay)


def test_reload_keeps_adapters_of_unchanged_channels(channels: ChannelService) -> None:
    implicit = Channel(id="fal", name="fal", adapter="fal", base_url="http://fal.test", secret="fal-key",
                       models={"*": None})
    r = router(channels, {"name": "kept", "secret": "sk-kept"}, {"name": "rotated", "secret": "sk-old"},
               {"name": "gone"}, implicit=(implicit,))
    kept, rotated = r.adapters[cid(r, "kept")], r.adapters[cid(r, "rotated")]
    assert kept.secret == "sk-kept" and r.adapters["fal"].secret == "fal-key"  # credentials decrypted
    channels.update("rotated", secret="sk-new")
    channels.update("gone", enabled=False, priority=3)
    r.reload()
    assert r.adapters[cid(r, "kept")] is kept
    assert r.adapters[cid(r, "rotated")] is not rotated and r.adapters[cid(r, "rotated")].secret == "sk-new"
    assert rotated in r._retired  # closed with the router, not while a request may still use it
    assert not r.channels[cid(r, "gone")].enabled and r.channels[cid(r, "gone")].priority == 3
    assert "fal" in r.channels
