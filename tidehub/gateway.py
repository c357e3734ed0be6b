"""The composition root: builds the core services from settings, and starts and stops them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tidehub.catalog import Catalog, load_catalog
from tidehub.config import Settings
from tidehub.core.accounts import AccountService
from tidehub.core.assets import AssetStore
from tidehub.core.auth import Authenticator
from tidehub.core.engine import Engine
from tidehub.core.events import LocalTaskChanges, TaskEvents
from tidehub.core.relay import Relay
from tidehub.core.routing import Router
from tidehub.core.tasks import TaskService
from tidehub.core.channels import ALL, Channel, ChannelService
from tidehub.core.health import BreakerPolicy
from tidehub.core.keys import KeyService
from tidehub.core.limits import Limits
from tidehub.core.operators import OperatorService
from tidehub.core.sessions import SessionService
from tidehub.core.secrets_box import SecretBox
from tidehub.core import notify
from tidehub.core.channel_state import SharedChannels
from tidehub.core.notify import Notifier
from tidehub.core.shared import SharedState
from tidehub.core.stats import StatsService
from tidehub.core.ssrf import URLGuard
from tidehub.core.throttle import FailureThrottle
from tidehub.core.webhooks import WebhookSender, WebhookService
from tidehub.providers import ADAPTERS
from tidehub.store import Store


@dataclass
class Gateway:
    settings: Settings
    store: Store
    catalog: Catalog
    auth: Authenticator
    tasks: TaskService
    accounts: AccountService
    assets: AssetStore
    router: Router
    engine: Engine | None
    channels: ChannelService
    guard: URLGuard
    webhooks: WebhookService
    sender: WebhookSender
    relay: Relay
    shared: SharedState
    keys: KeyService
    operators: OperatorService
    sessions: SessionService
    stats: StatsService
    events: TaskEvents
    limits: Limits
    notify: Notifier
    shared_channels: SharedChannels | None = None

    @classmethod
    def open(cls, settings: Settings) -> "Gateway":
        settings.make_data_dir()
        store = Store(settings.db_url)
        catalog = load_catalog([Path(p) for p in settings.catalog_dirs.split(":") if p])
        channels = ChannelService(store, catalog, SecretBox(settings.secret_key), ADAPTERS)
        if settings.channels_file:
            channels.sync_file(Path(settings.channels_file))
        implicit = []
        if settings.fal_key:
            implicit.append(Channel(id="fal", name="fal", adapter="fal", base_url=settings.fal_base_url,
                                    secret=settings.fal_key, models={ALL: None}))
        if settings.openai_key:
            implicit.append(Channel(id="openai", name="openai", adapter="openai", base_url=settings.openai_base_url,
                                    secret=settings.openai_key, models={ALL: None}))
        policy = BreakerPolicy(consecutive_failures=settings.breaker_failures,
                               cool_down_s=settings.breaker_cool_down_s * settings.time_scale,
                               probe_timeout_s=60.0 * settings.time_scale)
        router = Router(channels, implicit, policy, options={"fal": {"jwks_url": settings.fal_jwks_url}})
        guard = URLGuard.from_config(settings.ssrf_allow)
        assets = AssetStore(store, settings, guard)
        # In-process wake-ups for live task events; other processes' changes are seen by polling.
        changes = LocalTaskChanges()
        engine = Engine(store, catalog, router, assets, settings, changes) if settings.engine_enabled else None
        shared = SharedState(settings.redis_url, prefix=settings.redis_prefix)
        limits = Limits(store, shared)
        notifier = notify.for_shared(shared)
        if engine is not None:
            notifier.subscribe(notify.WAKE, lambda _: engine.wake())
            notifier.subscribe(notify.CANCEL, engine.cancel_step)
        tasks = TaskService(store, settings, guard, wake=lambda: notifier.publish(notify.WAKE),
                            cancelled=lambda task_id: notifier.publish(notify.CANCEL, task_id), changes=changes,
                            limits=limits)
        relay = Relay(tasks, store, catalog, router, assets, settings,
                      running=(lambda: engine.running) if engine else dict)
        auth = Authenticator(store, settings.key_cache_ttl_s, throttle=FailureThrottle(
            settings.auth_failures_per_minute, what="failed authentications"), limits=limits)
        notifier.subscribe(notify.KEY_CHANGED, auth.forget)
        accounts = AccountService(store, FailureThrottle(settings.redeem_failures_per_minute,
                                                         what="failed redemption attempts"))
        operators = OperatorService(store)
        sessions = SessionService(store, auth, operators, idle_s=settings.console_idle_s,
                                  lifetime_s=settings.console_session_s,
                                  throttle=FailureThrottle(settings.console_login_attempts,
                                                           settings.console_login_window_s,
                                                           what="failed sign-ins", code="too_many_attempts"))
        # With Redis, breakers and per-minute budgets are shared by every process.
        shared_channels = SharedChannels(shared, notifier, router) if shared.enabled else None
        keys = KeyService(store, catalog, changed=lambda key_id: notifier.publish(notify.KEY_CHANGED, key_id))
        return cls(settings, store, catalog, auth, tasks, accounts, assets, router, engine, channels, guard,
                   WebhookService(store),
                   WebhookSender(store, guard, time_scale=settings.time_scale), relay,
                   shared, keys, operators, sessions, StatsService(store),
                   TaskEvents(store, tasks, changes, poll_s=settings.events_poll_s), limits, notifier,
                   shared_channels)

    def start(self) -> None:
        self.notify.start()
        if self.shared_channels is not None:
            self.shared_channels.start()
        if self.engine is not None:
            self.engine.start()
            self.engine.spawn(self.sender.run(lambda: self.engine is None or self.engine.stopping),
                              "tidehub-webhooks")

    async def close(self) -> None:
        await self.relay.close()  # records the last relayed calls and gives back their credit blocks
        if self.engine is not None:
            await self.engine.stop()
        await self.sender.close()
        await self.router.close()
        await self.assets.close()
        if self.shared_channels is not None:
            await self.shared_channels.close()
        await self.notify.close()
        await self.shared.close()
        self.store.close()
