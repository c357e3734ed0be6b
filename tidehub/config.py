"""Settings, read from the environment (``TIDEHUB_*``) and overridden by CLI flags.

Every setting is documented in docs/CONFIGURATION.md; keep the two in step.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TIDEHUB_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8000
    data_dir: Path = Path("./tidehub-data")
    # Empty means SQLite at <data_dir>/tidehub.db.
    database_url: str = ""
    # The base URL clients reach this gateway at; asset links are built on it.
    public_url: str = ""
    # A separate origin for result file links (it must route /files/ to this gateway); empty: public_url.
    files_url: str = ""

    # Upstream fal account (or the simulator in the demo): an implicit channel named "fal".
    fal_base_url: str = "https://queue.fal.run"
    fal_key: str = ""
    # Upstream OpenAI account (or any OpenAI-compatible server): an implicit channel named "openai"
    # serving every catalog entry with an `openai` upstream. The URL includes the version prefix.
    openai_base_url: str = "https://api.openai.com/v1"
    openai_key: str = ""
    # Hand upstreams a callback URL (under public_url) so results show up without waiting for the
    # next poll; polling stays on as the safety net. The upstream must be able to reach public_url.
    upstream_callbacks: bool = False
    # Where fal publishes the keys its webhooks are signed with.
    fal_jwks_url: str = "https://rest.alpha.fal.ai/.well-known/jwks.json"
    # Channels (upstream accounts) to create or update at start, from a YAML file.
    channels_file: str = ""
    # Encrypts channel credentials at rest; required once a channel stores one.
    secret_key: str = ""
    # Addresses Tidehub may fetch or call back, or accept in media URL inputs, although they are
    # private (comma-separated IPs or CIDRs, each optionally with :port). Everything private,
    # loopback or link-local is refused otherwise, after DNS resolution and on every redirect.
    ssrf_allow: str = ""
    # Redis (redis://host:6379/0), optional: shared rate limits, breaker state, wake-ups and key
    # revocation across processes and hosts. Never the only copy of anything; unreachable means
    # "as if unset" until it answers again.
    redis_url: str = ""
    # Every Redis key and channel Tidehub uses starts with this (several gateways can share a Redis).
    redis_prefix: str = "tidehub:"
    # Origins (comma-separated, or *) whose web pages may call the bearer-key APIs (CORS); empty: none.
    cors_origins: str = ""
    # Bearer token of the operator API (/admin/v1); empty turns it off.
    admin_token: str = ""
    # Bearer token of GET /metrics (the admin token works too); with neither, /metrics is off.
    metrics_token: str = ""
    # Count every HTTP request for the metrics (by dialect, route template and status).
    http_metrics: bool = True
    # Log lines as plain text or as one JSON object a line (text, json); and one line per request.
    log_format: str = "text"
    access_log: bool = False
    # Failed authentications (secrets that match no key) and failed redemption attempts one client
    # address may make per minute before it gets 429s; 0 turns the limit off. Counted per process.
    auth_failures_per_minute: int = 20
    redeem_failures_per_minute: int = 10
    # Circuit breaker: opens after this many failures in a row (or half the requests failing over
    # a minute), and lets a probe through after the cool-down.
    breaker_failures: int = 5
    breaker_cool_down_s: float = 30.0

    # Extra catalog directories (colon-separated paths) for operator-added models.
    catalog_dirs: str = ""

    # Engine.
    engine_enabled: bool = True
    engine_concurrency: int = 256
    engine_batch: int = 200
    engine_tick_s: float = 0.25
    lease_s: float = 30.0
    # Upstream attempts per task (submits and runs, over all channels) before it fails.
    max_attempts: int = 8
    # Poll intervals are derived from each model's typical run time, within these bounds.
    poll_min_s: float = 1.0
    poll_max_s: float = 15.0
    # Deadline per capability, in seconds, before a task becomes `timeout`.
    deadline_image_s: float = 600
    deadline_video_s: float = 1800
    deadline_audio_s: float = 900
    deadline_transcribe_s: float = 900
    deadline_chat_s: float = 600
    deadline_embeddings_s: float = 300
    # Multiplies every engine interval and deadline; tests turn it down with the simulator.
    time_scale: float = 1.0

    # Live task events (/tasks/{id}/events, ?wait=): how often a waiter looks at the database when
    # nothing woke it (the task runs in another process).
    events_poll_s: float = 0.5

    # Assets.
    asset_retention_days: float = 14
    asset_sweep_interval_s: float = 3600
    # Task and relayed-call rows (with their ledger entries and webhook deliveries) are deleted this
    # long after they were made; the usage rollups keep their sums for good.
    record_retention_days: float = 90
    max_asset_bytes: int = 2 * 1024**3

    # HTTP.
    max_body_bytes: int = 1024 * 1024
    # The OpenAI-compatible relay takes larger bodies: chat histories with images, audio uploads.
    max_upload_bytes: int = 32 * 1024 * 1024
    # Channels one relayed call may try before it gives up (it fails over only before the first
    # byte of the answer reached the client).
    relay_attempts: int = 3
    # Relayed calls' records are written in batches this often; a credit block with no call for
    # relay_block_idle_s (or open relay_block_max_s) gives back what it did not spend.
    relay_flush_s: float = 0.02
    relay_block_idle_s: float = 5.0
    relay_block_max_s: float = 60.0
    key_cache_ttl_s: float = 5.0

    # Console (/console): a session ends after this long without a request, and in any case this
    # long after sign-in; sign-ins fail for a while after this many failures per address or user
    # name within the window.
    console_idle_s: float = 2 * 3600
    console_session_s: float = 12 * 3600
    console_login_attempts: int = 10
    console_login_window_s: float = 300

    # Demo: the simulator's port and time scale.
    sim_port: int = 8001
    sim_time_scale: float = 1.0
    demo: bool = Field(default=False)

    @property
    def db_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'tidehub.db').resolve()}"

    @property
    def base_url(self) -> str:
        if self.public_url:
            return self.public_url.rstrip("/")
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    @property
    def files_base_url(self) -> str:
        return self.files_url.rstrip("/") if self.files_url else self.base_url

    def make_data_dir(self) -> Path:
        """The data directory, made (or narrowed to) owner-only: it holds the database, with its
        webhook secrets and key hashes, and every result file."""
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        mode = self.data_dir.stat().st_mode & 0o777
        if mode & 0o077:
            os.chmod(self.data_dir, mode & 0o700)
        return self.data_dir

    @property
    def asset_dir(self) -> Path:
        return self.data_dir / "assets"

    def deadline_for(self, capability: str) -> float:
        value = getattr(self, f"deadline_{capability}_s", self.deadline_video_s)
        return value * self.time_scale
