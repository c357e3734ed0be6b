"""The one schema. Every change to it is also a numbered Alembic migration in migrations/versions.

Times are float epoch seconds: cheap to compare in the engine's claim query on every backend.
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

# An active task, written as literal text: a query must say exactly this for SQLite to use the
# partial indexes below (it cannot match bound parameters against an index's condition).
ACTIVE_TASK = sa.text("status IN ('queued', 'running')")

accounts = sa.Table(
    "accounts",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False, server_default=""),
    sa.Column("created_at", sa.Float(53), nullable=False),
    # Money, in integer credits: available to spend, held by live tasks, captured so far, and
    # added in all (top-ups and redemptions). added = credits + held + spent, always.
    sa.Column("credits", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("held", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("spent", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("added", sa.BigInteger, nullable=False, server_default="0"),
    sa.CheckConstraint("credits >= 0 AND held >= 0", name="ck_accounts_not_negative"),
    # Signs the webhooks this account receives (Standard Webhooks, "whsec_..."); made on first use.
    sa.Column("webhook_secret", sa.String(100)),
    # Limits of all the account's keys together (core/limits.py); null: none.
    sa.Column("rpm", sa.Integer),
    sa.Column("max_concurrency", sa.Integer),
    sa.Index("ix_accounts_created_at", "created_at"),
)

api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("account_id", sa.String(40), sa.ForeignKey("accounts.id"), nullable=False, index=True),
    sa.Column("name", sa.String(200), nullable=False, server_default=""),
    # The first characters of the key, so an operator can tell keys apart without the secret.
    sa.Column("prefix", sa.String(20), nullable=False),
    sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("created_at", sa.Float(53), nullable=False),
    sa.Column("revoked_at", sa.Float(53)),
    # Optional limits of one key.
    sa.Column("expires_at", sa.Float(53)),
    sa.Column("spend_cap", sa.BigInteger),
    # Credits this key has held or spent; a release gives them back.
    sa.Column("spent", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("allowed_models", sa.JSON),
    sa.Column("allowed_ips", sa.JSON),
    # Requests per minute and tasks (with relayed calls) at once (core/limits.py); null: no limit.
    sa.Column("rpm", sa.Integer),
    sa.Column("max_concurrency", sa.Integer),
    sa.Index("ix_api_keys_created_at", "created_at"),
)

tasks = sa.Table(
    "tasks",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("account_id", sa.String(40), nullable=False),
    sa.Column("key_id", sa.String(40), nullable=False),
    sa.Column("model", sa.String(120), nullable=False),
    sa.Column("endpoint", sa.String(200), nullable=False),
    sa.Column("capability", sa.String(20), nullable=False),
    sa.Column("mode", sa.String(60), nullable=False),
    sa.Column("input", sa.JSON, nullable=False),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("progress", sa.Integer, nullable=False, server_default="0"),
    sa.Column("queue_position", sa.Integer),
    sa.Column("adapter", sa.String(40)),
    sa.Column("upstream_ref", sa.String(200)),
    sa.Column("upstream", sa.JSON),
    sa.Column("output", sa.JSON),
    sa.Column("error_code", sa.String(60)),
    sa.Column("error_message", sa.Text),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("webhook_url", sa.Text),
    sa.Column("user_identifier", sa.String(200)),
    # The id of the request that submitted the task: its engine steps, upstream calls and webhook
    # deliveries carry it (X-Request-Id, log lines).
    sa.Column("request_id", sa.String(128)),
    # The channel (upstream account) running the task, and those that failed it already.
    sa.Column("channel_id", sa.String(40)),
    sa.Column("failed_channels", sa.JSON),
    # Credits held at submit and captured on success (the rest is released).
    sa.Column("held", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("captured", sa.BigInteger, nullable=False, server_default="0"),
    # Set while the upstream still has to be told about a cancel or timeout.
    sa.Column("cancel_upstream", sa.Boolean, nullable=False, server_default=sa.false()),
    # The engine has work for a task when next_check_at is due and no live lease covers it.
    sa.Column("next_check_at", sa.Float(53)),
    sa.Column("lease_owner", sa.String(64)),
    sa.Column("lease_until", sa.Float(53)),
    sa.Column("deadline_at", sa.Float(53), nullable=False),
    sa.Column("created_at", sa.Float(53), nullable=False),
    sa.Column("updated_at", sa.Float(53), nullable=False),
    sa.Column("started_at", sa.Float(53)),
    sa.Column("finished_at", sa.Float(53)),
    # The upstream's log lines (bounded, store/events.py) and how many of the current upstream
    # job's lines were taken already (the upstream reports them all at every poll).
    sa.Column("logs", sa.JSON),
    sa.Column("logs_seen", sa.Integer, nullable=False, server_default="0"),
    # Only rows the engine still has work for: a settled row (most of them) costs this index nothing.
    sa.Index("ix_tasks_next_check_at", "next_check_at", sqlite_where=sa.text("next_check_at IS NOT NULL"),
             postgresql_where=sa.text("next_check_at IS NOT NULL")),
    sa.Index("ix_tasks_account_created", "account_id", "created_at"),
    sa.Index("ix_tasks_status_channel", "status", "channel_id"),
    sa.Index("ix_tasks_status_created", "status", "created_at"),
    # The console's task list: newest first over a time window, with or without a key filter.
    sa.Index("ix_tasks_created", "created_at"),
    sa.Index("ix_tasks_key_created", "key_id", "created_at"),
    # A key's and an account's active tasks, counted against their concurrency limits. Partial:
    # only active rows are in it, so finished tasks and relayed calls cost it nothing.
    sa.Index("ix_tasks_active_key", "key_id", sqlite_where=ACTIVE_TASK, postgresql_where=ACTIVE_TASK),
    sa.Index("ix_tasks_active_account", "account_id", sqlite_where=ACTIVE_TASK, postgresql_where=ACTIVE_TASK),
)

channels = sa.Table(
    "channels",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("name", sa.String(100), nullable=False, unique=True),
    sa.Column("adapter", sa.String(40), nullable=False),
    sa.Column("base_url", sa.Text, nullable=False),
    # The upstream credential, encrypted (core/secrets_box.py).
    sa.Column("secret", sa.Text, nullable=False, server_default=""),
    # Catalog endpoint slug -> upstream model id (null: the catalog's id for this adapter);
    # {"*": null} serves every catalog model the adapter knows.
    sa.Column("models", sa.JSON, nullable=False),
    sa.Column("priority", sa.Integer, nullable=False, server_default="0"),
    sa.Column("weight", sa.Integer, nullable=False, server_default="1"),
    sa.Column("max_concurrency", sa.Integer),
    sa.Column("rpm", sa.Integer),
    sa.Column("enabled", sa.Boolean, nullable=False, server_default=sa.true()),
    sa.Column("created_at", sa.Float(53), nullable=False),
    sa.Column("updated_at", sa.Float(53), nullable=False),
)

# What the engines last saw of each channel, for operators (CLI, admin API).
channel_health = sa.Table(
    "channel_health",
    metadata,
    sa.Column("channel_id", sa.String(40), primary_key=True),
    sa.Column("state", sa.String(20), nullable=False),
    sa.Column("requests", sa.Integer, nullable=False),
    sa.Column("errors", sa.Integer, nullable=False),
    sa.Column("consecutive_failures", sa.Integer, nullable=False),
    sa.Column("latency_ms", sa.Float),
    sa.Column("in_flight", sa.Integer, nullable=False),
    sa.Column("updated_at", sa.Float(53), nullable=False),
)

# Every movement of credits. A (task, kind) pair appears at most once, so a replayed transition
# cannot hold, capture or release twice.
ledger = sa.Table(
    "ledger",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("account_id", sa.String(40), nullable=False, index=True),
    sa.Column("task_id", sa.String(64)),
    sa.Column("kind", sa.String(20), nullable=False),  # topup, redeem, hold, capture, release
    sa.Column("amount", sa.BigInteger, nullable=False),
    sa.Column("note", sa.String(200)),
    sa.Column("created_at", sa.Float(53), nullable=False),
    sa.UniqueConstraint("task_id", "kind", name="uq_ledger_task_kind"),
)

redemption_codes = sa.Table(
    "redemption_codes",
    metadata,
    # Codes are secrets until used: stored hashed, like keys.
    sa.Column("code_hash", sa.String(64), primary_key=True),
    sa.Column("prefix", sa.String(20), nullable=False),
    sa.Column("credits", sa.BigInteger, nullable=False),
    sa.Column("created_at", sa.Float(53), nullable=False),
    sa.Column("expires_at", sa.Float(53)),
    sa.Column("redeemed_at", sa.Float(53)),
    sa.Column("redeemed_by", sa.String(40)),
    # Set by an operator: the code can no longer be redeemed.
    sa.Column("disabled_at", sa.Float(53)),
    # The batch it was made in (codes made before batches existed have none).
    sa.Column("batch_id", sa.String(40)),
    sa.Index("ix_redemption_codes_created_at", "created_at"),
)

assets = sa.Table(
    "assets",
    metadata,
    sa.Column("token", sa.String(64), primary_key=True),
    sa.Column("task_id", sa.String(64), nullable=False, index=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("path", sa.String(400), nullable=False),
    sa.Column("content_type", sa.String(100), nullable=False),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("source_url", sa.Text, nullable=False),
    sa.Column("created_at", sa.Float(53), nullable=False),
    sa.Column("expires_at", sa.Float(53), nullable=False, index=True),
)


# Idempotency-Key on submit: the same key and body give back the same task.
idempotency_keys = sa.Table(
    "idempotency_keys",
    metadata,
    sa.Column("account_id", sa.String(40), primary_key=True),
    sa.Column("key", sa.String(200), primary_key=True),
    sa.Column("request_hash", sa.String(64), nullable=False),
    sa.Column("task_id", sa.String(64), nullable=False),
    sa.Column("created_at", sa.Float(53), nullable=False, index=True),
)

# What happened to each task, in order (status, progress, queue position, upstream log lines):
# written in the transaction of the change, read by the live event streams of every process.
task_events = sa.Table(
    "task_events",
    metadata,
    sa.Column("task_id", sa.String(64), primary_key=True),
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("at", sa.Float(53), nullable=False, index=True),
    sa.Column("kind", sa.String(20), nullable=False),  # status, progress, queue, log
    sa.Column("data", sa.JSON, nullable=False),
)

# Client webhooks: one delivery per terminal task (written with the transition), its attempts.
webhook_deliveries = sa.Table(
    "webhook_deliveries",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),  # the webhook-id header, stable across retries
    sa.Column("account_id", sa.String(40), nullable=False, index=True),
    sa.Column("task_id", sa.String(64), nullable=False, index=True),
    sa.Column("url", sa.Text, nullable=False),
    sa.Column("status", sa.String(20), nullable=False),  # pending, delivered, failed, disabled
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("next_attempt_at", sa.Float(53), index=True),
    sa.Column("last_status_code", sa.Integer),
    sa.Column("last_error", sa.Text),
    sa.Column("created_at", sa.Float(53), nullable=False),
    sa.Column("delivered_at", sa.Float(53)),
    sa.Index("ix_webhook_deliveries_created_at", "created_at"),
)

webhook_attempts = sa.Table(
    "webhook_attempts",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("delivery_id", sa.String(40), nullable=False, index=True),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("at", sa.Float(53), nullable=False),
    sa.Column("status_code", sa.Integer),
    sa.Column("error", sa.Text),
    sa.Column("duration_ms", sa.Float),
)

# Console operators (people who run the gateway from a browser) and their sign-in.
operators = sa.Table(
    "operators",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("name", sa.String(100), nullable=False, unique=True),
    sa.Column("role", sa.String(20), nullable=False),  # admin, viewer
    # argon2id, with its parameters in the string (rehashed on the next sign-in when they change).
    sa.Column("password_hash", sa.String(200), nullable=False),
    sa.Column("created_at", sa.Float(53), nullable=False),
    sa.Column("updated_at", sa.Float(53), nullable=False),
    sa.Column("last_login_at", sa.Float(53)),
    sa.Column("disabled_at", sa.Float(53)),
)

# Console sessions: the browser holds only a random token, stored here as its SHA-256 hash. A
# session is an operator's, or a customer's (bound to the account and the API key it signed in with).
console_sessions = sa.Table(
    "console_sessions",
    metadata,
    sa.Column("token_hash", sa.String(64), primary_key=True),
    sa.Column("kind", sa.String(20), nullable=False),  # operator, customer
    sa.Column("operator_id", sa.String(40), index=True),
    sa.Column("account_id", sa.String(40)),
    sa.Column("key_id", sa.String(40), index=True),
    sa.Column("csrf_token", sa.String(64), nullable=False),
    sa.Column("address", sa.String(100)),
    sa.Column("created_at", sa.Float(53), nullable=False),
    sa.Column("last_seen_at", sa.Float(53), nullable=False),
    sa.Column("expires_at", sa.Float(53), nullable=False, index=True),
)

# Who changed what, when, from where: written by core services when called with an actor.
audit_log = sa.Table(
    "audit_log",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("at", sa.Float(53), nullable=False, index=True),
    sa.Column("actor", sa.String(120), nullable=False),  # operator:NAME, customer:ACCOUNT, cli
    sa.Column("address", sa.String(100)),
    sa.Column("action", sa.String(60), nullable=False),  # key.create, credits.add, channel.update, ...
    sa.Column("target", sa.String(120)),
    sa.Column("details", sa.JSON),
)

# Usage rolled up by hour and by day, kept for good: written in the transaction that settles a task
# or a batch of relayed calls (store/rollups.py), so the totals are exact however old the rows
# they came from (task rows are deleted after TIDEHUB_RECORD_RETENTION_DAYS). Grouped by account,
# key, model, channel, user_identifier, kind (task or relayed call) and outcome (the terminal
# status); "" stands for no channel or user, so the group is a primary key ON CONFLICT can use.
# Each settlement is added at three grains: "key" (every column of the group), "account" (account,
# model, kind and outcome; key, channel and user "") and "model" (model, kind and outcome only):
# the dashboard reads the coarse ones, whose rows are few however many keys, channels and end
# users there are.
LATENCY_BOUNDS_S = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900)  # the last bucket is open
usage_rollups = sa.Table(
    "usage_rollups",
    metadata,
    sa.Column("period", sa.String(4), primary_key=True),  # hour, day
    sa.Column("grain", sa.String(8), primary_key=True),  # key, account, model
    sa.Column("start", sa.BigInteger, primary_key=True),  # epoch seconds, UTC
    sa.Column("account_id", sa.String(40), primary_key=True),
    sa.Column("key_id", sa.String(40), primary_key=True),
    sa.Column("model", sa.String(120), primary_key=True),
    sa.Column("channel_id", sa.String(40), primary_key=True),
    sa.Column("user_identifier", sa.String(200), primary_key=True),
    sa.Column("kind", sa.String(8), primary_key=True),  # task, call
    sa.Column("outcome", sa.String(20), primary_key=True),  # succeeded, failed, timeout, canceled
    sa.Column("count", sa.BigInteger, nullable=False),
    sa.Column("credits", sa.BigInteger, nullable=False),
    sa.Column("input_tokens", sa.BigInteger, nullable=False),
    sa.Column("output_tokens", sa.BigInteger, nullable=False),
    # Submit to result, summed, and counted in fixed buckets (LATENCY_BOUNDS_S) for percentiles.
    sa.Column("latency_ms", sa.BigInteger, nullable=False),
    *(sa.Column(f"lat_{i}", sa.BigInteger, nullable=False) for i in range(len(LATENCY_BOUNDS_S) + 1)),
    sa.Index("ix_usage_rollups_account", "account_id", "period", "grain", "start"),
    # SQLite keeps the rows in primary-key order: a window of one grain is one contiguous range.
    sqlite_with_rowid=False,
)
