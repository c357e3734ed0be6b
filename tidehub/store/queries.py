"""Every query Tidehub runs, in one place.

The methods are synchronous (SQLAlchemy Core); the async parts of the gateway call them through
``Store.call`` on a small thread pool, so the event loop never waits on the database.
"""

from __future__ import annotations

import asyncio
import functools
import secrets
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterable, TypeVar

import sqlalchemy as sa

from tidehub.store.database import create_engine, migrate
from tidehub.store.schema import (
    accounts,
    api_keys,
    assets,
    channel_health,
    channels,
    idempotency_keys,
    ledger,
    redemption_codes,
    tasks,
    webhook_attempts,
    webhook_deliveries,
)
from tidehub.store.writer import GroupCommitWriter

T = TypeVar("T")

# A unique key already taken (an idempotency key used by a concurrent request, say).
DuplicateKey = sa.exc.IntegrityError

ACTIVE = ("queued", "running")
TERMINAL = ("succeeded", "failed", "timeout", "canceled")


# The hot reads, built once (building a statement costs more than running it on SQLite).
_KEY_BY_HASH = sa.select(
    api_keys.c.id, api_keys.c.account_id, api_keys.c.revoked_at, api_keys.c.expires_at,
    api_keys.c.allowed_models, api_keys.c.allowed_ips,
).where(
    api_keys.c.key_hash == sa.bindparam("key_hash")
)
_TASK = sa.select(tasks).where(tasks.c.id == sa.bindparam("id"))
_ACCOUNT_TASK = _TASK.where(tasks.c.account_id == sa.bindparam("account_id"))
# Submit: hold on the key (within its cap) and on the account (within its balance), note it,
# write the task. Built once: on SQLite, building a statement costs more than running it.
_AMOUNT = sa.bindparam("amount", type_=sa.BigInteger)
_HOLD_ON_KEY = (
    sa.update(api_keys)
    .where(api_keys.c.id == sa.bindparam("key_id"),
           sa.or_(api_keys.c.spend_cap.is_(None), api_keys.c.spent + _AMOUNT <= api_keys.c.spend_cap))
    .values(spent=api_keys.c.spent + _AMOUNT)
)
_UNHOLD_ON_KEY = (sa.update(api_keys).where(api_keys.c.id == sa.bindparam("key_id"))
                  .values(spent=api_keys.c.spent - _AMOUNT))
_HOLD_ON_ACCOUNT = (
    sa.update(accounts)
    .where(accounts.c.id == sa.bindparam("account_id"), accounts.c.credits >= _AMOUNT)
    .values(credits=accounts.c.credits - _AMOUNT, held=accounts.c.held + _AMOUNT)
)
_LEDGER_ENTRY = sa.insert(ledger)
# Relayed calls spend from a credit block (a running task row holding credits): held moves to spent.
_SPEND_FROM_BLOCK = (sa.update(tasks).where(tasks.c.id == sa.bindparam("block_id"))
                     .values(held=tasks.c.held - _AMOUNT))
_SPEND_ON_ACCOUNT = (sa.update(accounts).where(accounts.c.id == sa.bindparam("account_id"))
                     .values(held=accounts.c.held - _AMOUNT, spent=accounts.c.spent + _AMOUNT))
_NEW_TASK = sa.insert(tasks)
#: The mode of a task row that is a relay's credit block, not a piece of work (core/wallet.py).
CREDIT_BLOCK = "credit-block"
# A queued task's place: the tasks queued before it, counted no further than the cap.
QUEUE_POSITION_CAP = 100  # a deeper queue reads as "100 ahead or more"
_AHEAD = (sa.select(sa.literal(1)).select_from(tasks)
          .where(tasks.c.status == "queued", tasks.c.created_at < sa.bindparam("created_at"),
                 tasks.c.id != sa.bindparam("task_id"))
          .limit(QUEUE_POSITION_CAP).subquery())
_QUEUE_AHEAD = sa.select(sa.func.count()).select_from(_AHEAD)
# The engine's most frequent write: "nothing new upstream, look again later".
_RESCHEDULE = (
    sa.update(tasks)
    .where(tasks.c.id == sa.bindparam("task_id"), tasks.c.status.in_(ACTIVE),
           tasks.c.lease_owner == sa.bindparam("owner"))
    .values(next_check_at=sa.bindparam("next_check_at"), updated_at=sa.bindparam("now"),
            progress=sa.func.coalesce(sa.bindparam("progress", type_=sa.Integer), tasks.c.progress),
            queue_position=sa.bindparam("queue_position", type_=sa.Integer), lease_owner=None, lease_until=None)
)


def writes(fn: Callable[..., T]) -> Callable[..., T]:
    """A write is written as ``fn(self, conn, ...)`` inside a transaction. Called directly (CLI,
    tests) it gets a transaction of its own; through ``Store.call`` it joins the group commit."""

    @functools.wraps(fn)
    def alone(self: "Store", *args: Any, **kwargs: Any) -> T:
        with self.engine.connect().execution_options(immediate=True) as conn, conn.begin():
            return fn(self, conn, *args, **kwargs)

    alone._in_transaction = fn  # type: ignore[attr-defined]
    return alone


class Store:
    def __init__(self, url: str, *, run_migrations: bool = True) -> None:
        self.engine = create_engine(url)
        self.dialect = self.engine.dialect.name
        if run_migrations:
            migrate(self.engine)
        # A SQLite read by key takes microseconds and never waits for the writer (WAL): a hop to
        # a thread would cost more than the query. PostgreSQL reads cross the network: threads.
        self.inline_reads = self.dialect == "sqlite"
        self._readers = ThreadPoolExecutor(max_workers=8, thread_name_prefix="tidehub-db-read")
        # One writer, with group commit: SQLite takes one writer at a time anyway (and a writer that
        # finds the lock taken sleeps in steps of milliseconds); PostgreSQL saves commits.
        self.writer = GroupCommitWriter(self.engine)

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        in_tx = getattr(fn, "_in_transaction", None)
        if in_tx is not None:
            owner = fn.__self__  # type: ignore[attr-defined]
            return await self.writer.run(lambda conn: in_tx(owner, conn, *args, **kwargs))
        if self.inline_reads:
            return fn(*args, **kwargs)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._readers, functools.partial(fn, *args, **kwargs))

    def close(self) -> None:
        self._readers.shutdown(wait=True)
        self.writer.close()
        self.engine.dispose()

    def ping(self) -> None:
        with self.engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")

    # -- accounts and keys -------------------------------------------------------------------

    @writes
    def create_account(self, conn: sa.Connection, account_id: str, name: str, now: float, credits: int = 0) -> None:
        conn.execute(sa.insert(accounts).values(id=account_id, name=name, created_at=now))
        if credits:
            self._add_credits(conn, account_id, credits, now, "topup", "initial credits")

    @writes
    def add_credits(self, conn: sa.Connection, account_id: str, amount: int, now: float, note: str = "") -> bool:
        return self._add_credits(conn, account_id, amount, now, "topup", note)

    def _add_credits(self, conn: sa.Connection, account_id: str, amount: int, now: float, kind: str,
                     note: str) -> bool:
        done = conn.execute(
            sa.update(accounts).where(accounts.c.id == account_id)
            .values(credits=accounts.c.credits + amount, added=accounts.c.added + amount)
        ).rowcount
        if done:
            conn.execute(sa.insert(ledger).values(account_id=account_id, kind=kind, amount=amount, note=note,
                                                  created_at=now))
        return done == 1

    def account(self, account_id: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(accounts).where(accounts.c.id == account_id)).first()
        return dict(row._mapping) if row else None

    def ledger_of(self, account_id: str) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(ledger).where(ledger.c.account_id == account_id).order_by(ledger.c.id)).all()
        return [dict(r._mapping) for r in rows]

    # -- redemption codes -------------------------------------------------------------------

    @writes
    def insert_codes(self, conn: sa.Connection, rows: list[dict[str, Any]]) -> None:
        conn.execute(sa.insert(redemption_codes), rows)

    @writes
    def redeem_code(self, conn: sa.Connection, code_hash: str, account_id: str, now: float) -> tuple[str, int]:
        """Use a code once, ever: ("ok", credits) or (reason, 0) with reason unknown, used or expired."""
        row = conn.execute(
            sa.update(redemption_codes)
            .where(redemption_codes.c.code_hash == code_hash, redemption_codes.c.redeemed_at.is_(None),
                   sa.or_(redemption_codes.c.expires_at.is_(None), redemption_codes.c.expires_at > now))
            .values(redeemed_at=now, redeemed_by=account_id)
            .returning(redemption_codes.c.credits, redemption_codes.c.prefix)
        ).first()
        if row is not None:
            self._add_credits(conn, account_id, row.credits, now, "redeem", f"code {row.prefix}")
            return "ok", row.credits
        code = conn.execute(sa.select(redemption_codes.c.redeemed_at).where(
            redemption_codes.c.code_hash == code_hash)).first()
        if code is None:
            return "unknown", 0
        return ("used" if code.redeemed_at is not None else "expired"), 0

    def account_exists(self, account_id: str) -> bool:
        with self.engine.connect() as conn:
            return conn.execute(sa.select(accounts.c.id).where(accounts.c.id == account_id)).first() is not None

    @writes
    def insert_key(self, conn: sa.Connection, **values: Any) -> None:
        conn.execute(sa.insert(api_keys).values(**values))

    def key_by_hash(self, key_hash: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(_KEY_BY_HASH, {"key_hash": key_hash}).first()
        return dict(row._mapping) if row else None

    def list_keys(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(
                    api_keys.c.id,
                    api_keys.c.account_id,
                    api_keys.c.name,
                    api_keys.c.prefix,
                    api_keys.c.created_at,
                    api_keys.c.revoked_at,
                    api_keys.c.expires_at,
                    api_keys.c.spend_cap,
                    api_keys.c.spent,
                    api_keys.c.allowed_models,
                    api_keys.c.allowed_ips,
                ).order_by(api_keys.c.created_at)
            ).all()
        return [dict(r._mapping) for r in rows]

    @writes
    def revoke_key(self, conn: sa.Connection, key_id: str, now: float) -> bool:
        res = conn.execute(
            sa.update(api_keys)
            .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
            .values(revoked_at=now)
        )
        return res.rowcount == 1

    # -- tasks -------------------------------------------------------------------------------

    @writes
    def open_task(
        self, conn: sa.Connection, row: dict[str, Any], idempotency: tuple[str, str] | None = None
    ) -> str | None:
        """Hold the task's price and write the task, in one transaction. Returns None, or the code
        of the reason it was refused (nothing is written then). With ``idempotency`` (key, request
        hash), the key is recorded too; a key used already makes the whole write fail."""
        if idempotency is not None:
            conn.execute(sa.insert(idempotency_keys).values(
                account_id=row["account_id"], key=idempotency[0], request_hash=idempotency[1], task_id=row["id"],
                created_at=row["created_at"]))
        hold = row["held"]
        if hold:
            # The key's cap first, then the balance; each a conditional update, so however many
            # submits race, none passes a check another one has already used up.
            who = {"key_id": row["key_id"], "account_id": row["account_id"], "amount": hold}
            if conn.execute(_HOLD_ON_KEY, who).rowcount != 1:
                return "key_spend_cap"
            if conn.execute(_HOLD_ON_ACCOUNT, who).rowcount != 1:
                conn.execute(_UNHOLD_ON_KEY, who)
                return "insufficient_credits"
            conn.execute(_LEDGER_ENTRY, {"account_id": row["account_id"], "task_id": row["id"], "kind": "hold",
                                         "amount": hold, "created_at": row["created_at"], "note": None})
        conn.execute(_NEW_TASK, row)
        return None

    def _settle(self, conn: sa.Connection, task_id: str, where: list[Any], values: dict[str, Any],
                charge: int, now: float) -> bool:
        """The one way out of an active status: compare-and-set the task, then capture ``charge``
        (at most the hold) and release the rest. Both happen, or neither."""
        charge = max(0, charge)  # a charge never pays the customer
        row = conn.execute(
            sa.update(tasks).where(tasks.c.id == task_id, *where)
            .values(**values, captured=sa.case((tasks.c.held < charge, tasks.c.held), else_=charge))
            .returning(tasks.c.account_id, tasks.c.key_id, tasks.c.held, tasks.c.captured, tasks.c.webhook_url)
        ).first()
        if row is None:
            return False
        if row.webhook_url:
            # The outbox: the client's webhook is owed exactly when the task is final.
            conn.execute(sa.insert(webhook_deliveries).values(
                id=f"msg_{secrets.token_hex(12)}", account_id=row.account_id, task_id=task_id, url=row.webhook_url,
                status="pending", next_attempt_at=now, created_at=now))
        capture, release = row.captured, row.held - row.captured
        entries = [
            {"account_id": row.account_id, "task_id": task_id, "kind": kind, "amount": amount, "created_at": now}
            for kind, amount in (("capture", capture), ("release", release))
            if amount
        ]
        if entries:
            conn.execute(sa.insert(ledger), entries)
        if row.held:
            conn.execute(sa.update(accounts).where(accounts.c.id == row.account_id).values(
                held=accounts.c.held - row.held, credits=accounts.c.credits + release,
                spent=accounts.c.spent + capture))
            if release:
                conn.execute(sa.update(api_keys).where(api_keys.c.id == row.key_id)
                             .values(spent=api_keys.c.spent - release))
        return True

    def get_task(self, task_id: str, account_id: str | None = None) -> dict[str, Any] | None:
        """A task by id; with ``account_id``, only if it belongs to that account."""
        with self.engine.connect() as conn:
            if account_id is None:
                row = conn.execute(_TASK, {"id": task_id}).first()
            else:
                row = conn.execute(_ACCOUNT_TASK, {"id": task_id, "account_id": account_id}).first()
        return dict(row._mapping) if row else None

    @writes
    def update_task(
        self,
        conn: sa.Connection,
        task_id: str,
        values: dict[str, Any],
        *,
        status_in: Iterable[str] | None = None,
        lease_owner: str | None = None,
        account_id: str | None = None,
    ) -> bool:
        """Compare-and-set: apply ``values`` only if the task is still in one of ``status_in``
        (and still leased by ``lease_owner``). Returns whether it applied."""
        query = sa.update(tasks).where(tasks.c.id == task_id)
        if status_in is not None:
            query = query.where(tasks.c.status.in_(tuple(status_in)))
        if lease_owner is not None:
            query = query.where(tasks.c.lease_owner == lease_owner)
        if account_id is not None:
            query = query.where(tasks.c.account_id == account_id)
        return conn.execute(query.values(**values)).rowcount == 1

    @writes
    def reschedule(
        self, conn: sa.Connection, task_id: str, owner: str, next_check_at: float, now: float,
        progress: int | None, queue_position: int | None,
    ) -> bool:
        params = {"task_id": task_id, "owner": owner, "next_check_at": next_check_at, "now": now,
                  "progress": progress, "queue_position": queue_position}
        return conn.execute(_RESCHEDULE, params).rowcount == 1

    @writes
    def reserve_channel(
        self, conn: sa.Connection, task_id: str, owner: str, channel_id: str, limit: int | None
    ) -> bool:
        """Claim a slot on a channel for a task about to be submitted there. With a ``limit``, only
        while fewer than that many tasks hold or run on the channel, counted in the same statement,
        so the limit holds across processes."""
        query = sa.update(tasks).where(tasks.c.id == task_id, tasks.c.status == "queued",
                                       tasks.c.lease_owner == owner)
        if limit is not None:
            if self.dialect == "postgresql":
                conn.execute(sa.select(sa.func.pg_advisory_xact_lock(sa.func.hashtext(channel_id))))
            other = tasks.alias("other")
            busy = (sa.select(sa.func.count()).select_from(other)
                    .where(other.c.channel_id == channel_id, other.c.status.in_(ACTIVE), other.c.id != task_id)
                    .scalar_subquery())
            query = query.where(busy < limit)
        return conn.execute(query.values(channel_id=channel_id)).rowcount == 1

    @writes
    def nudge_task(self, conn: sa.Connection, task_id: str, upstream_ref: str, now: float) -> bool:
        """An upstream callback says the job moved: check it now rather than at the next poll."""
        return conn.execute(
            sa.update(tasks)
            .where(tasks.c.id == task_id, tasks.c.upstream_ref == upstream_ref, tasks.c.status == "running")
            .values(next_check_at=now)
        ).rowcount == 1

    @writes
    def end_active(
        self,
        conn: sa.Connection,
        task_id: str,
        status: str,
        code: str,
        message: str,
        now: float,
        *,
        account_id: str | None = None,
    ) -> bool:
        """Move an active task to a terminal ``status`` (cancel, timeout). If the upstream already
        has the job, flag it so the engine tells the upstream to stop; the lease is dropped so the
        engine can do that at once."""
        has_job = tasks.c.upstream_ref.is_not(None)
        where = [tasks.c.status.in_(ACTIVE)]
        if account_id is not None:
            where.append(tasks.c.account_id == account_id)
        values = {
            "status": status,
            "error_code": code,
            "error_message": message,
            "finished_at": now,
            "updated_at": now,
            "cancel_upstream": has_job,
            "next_check_at": sa.case((has_job, now), else_=None),
            "lease_owner": None,
            "lease_until": None,
        }
        return self._settle(conn, task_id, where, values, 0, now)

    @writes
    def complete_task(
        self,
        conn: sa.Connection,
        task_id: str,
        lease_owner: str,
        values: dict[str, Any],
        asset_rows: list[dict[str, Any]],
        charge: int,
    ) -> bool:
        """Finish a running task: capture its charge and record its files, in one transaction."""
        where = [tasks.c.status == "running", tasks.c.lease_owner == lease_owner]
        if not self._settle(conn, task_id, where, values, charge, values["finished_at"]):
            return False
        if asset_rows:
            conn.execute(sa.insert(assets), asset_rows)
        return True

    @writes
    def record_calls(self, conn: sa.Connection, rows: list[dict[str, Any]], asset_rows: list[dict[str, Any]],
                     captured: dict[str, tuple[str, int]]) -> None:
        """Write finished relayed calls (already settled rows: held = captured = their charge), and
        move what they cost out of the credit blocks they were reserved from (``captured``: block
        id -> (account id, credits)), from held to spent."""
        if rows:
            conn.execute(_NEW_TASK, rows)
            entries = [{"account_id": r["account_id"], "task_id": r["id"], "kind": "capture", "amount": r["captured"],
                        "created_at": r["finished_at"], "note": None} for r in rows if r["captured"]]
            if entries:
                conn.execute(_LEDGER_ENTRY, entries)
        if asset_rows:
            conn.execute(sa.insert(assets), asset_rows)
        moves = [{"block_id": block, "account_id": account, "amount": amount}
                 for block, (account, amount) in captured.items() if amount]
        if moves:
            conn.execute(_SPEND_FROM_BLOCK, moves)
            conn.execute(_SPEND_ON_ACCOUNT, moves)

    @writes
    def fail_task(self, conn: sa.Connection, task_id: str, lease_owner: str, values: dict[str, Any]) -> bool:
        """An engine-side failure: free, so the hold goes back."""
        where = [tasks.c.status.in_(ACTIVE), tasks.c.lease_owner == lease_owner]
        return self._settle(conn, task_id, where, values, 0, values["finished_at"])

    @writes
    def claim_due(
        self, conn: sa.Connection, owner: str, now: float, lease_until: float, limit: int
    ) -> list[dict[str, Any]]:
        """Lease up to ``limit`` tasks the engine has work for, oldest due first."""
        due = (
            sa.select(tasks.c.id)
            .where(
                tasks.c.next_check_at <= now,
                sa.or_(tasks.c.lease_until.is_(None), tasks.c.lease_until < now),
            )
            .order_by(tasks.c.next_check_at)
            .limit(limit)
        )
        if self.dialect == "postgresql":
            due = due.with_for_update(skip_locked=True)
        query = (
            sa.update(tasks)
            .where(tasks.c.id.in_(due.scalar_subquery()))
            .values(lease_owner=owner, lease_until=lease_until)
            .returning(*tasks.c)
        )
        return [dict(r._mapping) for r in conn.execute(query).all()]

    def queue_position(self, task_id: str, created_at: float) -> int:
        """How many tasks wait in Tidehub's own queue ahead of this one (0: it is next), counted up
        to QUEUE_POSITION_CAP so that a read stays cheap however long the queue is."""
        with self.engine.connect() as conn:
            return int(conn.execute(_QUEUE_AHEAD, {"created_at": created_at, "task_id": task_id}).scalar_one())

    def next_due_at(self) -> float | None:
        with self.engine.connect() as conn:
            return conn.execute(sa.select(sa.func.min(tasks.c.next_check_at))).scalar()

    def count_tasks(self, statuses: Iterable[str]) -> int:
        with self.engine.connect() as conn:
            return conn.execute(
                sa.select(sa.func.count()).select_from(tasks).where(tasks.c.status.in_(tuple(statuses)))
            ).scalar_one()

    def usage(
        self,
        account_id: str,
        group_by: str,
        *,
        since: float | None = None,
        until: float | None = None,
        model: str | None = None,
        user_identifier: str | None = None,
        key_id: str | None = None,
    ) -> list[dict[str, Any]]:
        """Task counts and credits by day, model or user_identifier, newest groups first."""
        if group_by == "day":
            # Days in UTC; a float epoch divides the same way on every backend.
            key = sa.cast(sa.func.floor(tasks.c.created_at / 86400), sa.BigInteger)
        else:
            key = {"model": tasks.c.model, "user_identifier": tasks.c.user_identifier}[group_by]
        where = [tasks.c.account_id == account_id, tasks.c.mode != CREDIT_BLOCK]
        for column, value in ((tasks.c.model, model), (tasks.c.user_identifier, user_identifier),
                              (tasks.c.key_id, key_id)):
            if value is not None:
                where.append(column == value)
        if since is not None:
            where.append(tasks.c.created_at >= since)
        if until is not None:
            where.append(tasks.c.created_at < until)
        succeeded = sa.case((tasks.c.status == "succeeded", 1), else_=0)
        live = sa.case((tasks.c.status.in_(ACTIVE), tasks.c.held), else_=0)
        query = (
            sa.select(
                key.label("group"),
                sa.func.count().label("tasks"),
                sa.func.sum(succeeded).label("succeeded"),
                sa.func.sum(tasks.c.captured).label("credits"),
                sa.func.sum(live).label("held"),
            )
            .where(*where)
            .group_by(key)
            .order_by(key.desc())
        )
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(query).all()]

    def usage_records(self, account_id: str, limit: int, before: float | None = None) -> list[dict[str, Any]]:
        columns = [tasks.c.id, tasks.c.key_id, tasks.c.user_identifier, tasks.c.model, tasks.c.endpoint,
                   tasks.c.adapter, tasks.c.status, tasks.c.held, tasks.c.captured, tasks.c.created_at,
                   tasks.c.finished_at]
        query = sa.select(*columns).where(tasks.c.account_id == account_id, tasks.c.mode != CREDIT_BLOCK)
        if before is not None:
            query = query.where(tasks.c.created_at < before)
        query = query.order_by(tasks.c.created_at.desc()).limit(limit)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(query).all()]

    def live_holds(self) -> dict[str, int]:
        """Held credits of live tasks per account (what accounts.held must equal)."""
        query = (sa.select(tasks.c.account_id, sa.func.sum(tasks.c.held))
                 .where(tasks.c.status.in_(ACTIVE)).group_by(tasks.c.account_id))
        with self.engine.connect() as conn:
            return {a: int(h or 0) for a, h in conn.execute(query).all()}

    # -- channels ------------------------------------------------------------------------------

    @writes
    def insert_channel(self, conn: sa.Connection, row: dict[str, Any]) -> None:
        conn.execute(sa.insert(channels).values(**row))

    @writes
    def update_channel(self, conn: sa.Connection, channel_id: str, values: dict[str, Any]) -> bool:
        return conn.execute(sa.update(channels).where(channels.c.id == channel_id).values(**values)).rowcount == 1

    def list_channels(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(sa.select(channels).order_by(channels.c.name)).all()]

    def channels_version(self) -> tuple[int, float]:
        """Changes when any channel changes: lets every process notice an edit made elsewhere."""
        with self.engine.connect() as conn:
            count, latest = conn.execute(sa.select(sa.func.count(), sa.func.max(channels.c.updated_at))).one()
        return int(count), float(latest or 0)

    def running_per_channel(self) -> dict[str, int]:
        query = (sa.select(tasks.c.channel_id, sa.func.count())
                 .where(tasks.c.status.in_(ACTIVE), tasks.c.channel_id.is_not(None))
                 .group_by(tasks.c.channel_id))
        with self.engine.connect() as conn:
            return {c: int(n) for c, n in conn.execute(query).all() if c is not None}

    @writes
    def save_health(self, conn: sa.Connection, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            updated = conn.execute(sa.update(channel_health).where(channel_health.c.channel_id == row["channel_id"])
                                   .values(**row)).rowcount
            if not updated:
                conn.execute(sa.insert(channel_health).values(**row))

    def channel_health(self) -> dict[str, dict[str, Any]]:
        with self.engine.connect() as conn:
            return {r.channel_id: dict(r._mapping) for r in conn.execute(sa.select(channel_health)).all()}

    # -- idempotency -------------------------------------------------------------------------

    def idempotent_task(self, account_id: str, key: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(idempotency_keys).where(
                idempotency_keys.c.account_id == account_id, idempotency_keys.c.key == key)).first()
        return dict(row._mapping) if row else None

    @writes
    def forget_idempotency_keys(self, conn: sa.Connection, before: float) -> int:
        return conn.execute(sa.delete(idempotency_keys).where(idempotency_keys.c.created_at < before)).rowcount

    # -- client webhooks ---------------------------------------------------------------------

    @writes
    def webhook_secret(self, conn: sa.Connection, account_id: str, new: str, *, rotate: bool = False) -> str:
        """The account's signing secret: ``new`` becomes it if there is none yet (or on rotation)."""
        query = sa.update(accounts).where(accounts.c.id == account_id)
        if not rotate:
            query = query.where(accounts.c.webhook_secret.is_(None))
        conn.execute(query.values(webhook_secret=new))
        return conn.execute(sa.select(accounts.c.webhook_secret).where(accounts.c.id == account_id)).scalar_one()

    @writes
    def claim_deliveries(self, conn: sa.Connection, now: float, lease_until: float, limit: int) -> list[dict[str, Any]]:
        due = (sa.select(webhook_deliveries.c.id)
               .where(webhook_deliveries.c.next_attempt_at <= now, webhook_deliveries.c.status == "pending")
               .order_by(webhook_deliveries.c.next_attempt_at).limit(limit))
        if self.dialect == "postgresql":
            due = due.with_for_update(skip_locked=True)
        query = (sa.update(webhook_deliveries).where(webhook_deliveries.c.id.in_(due.scalar_subquery()))
                 .values(next_attempt_at=lease_until).returning(*webhook_deliveries.c))
        return [dict(r._mapping) for r in conn.execute(query).all()]

    @writes
    def record_attempt(
        self, conn: sa.Connection, delivery_id: str, attempt: dict[str, Any], status: str, next_attempt_at: float | None
    ) -> None:
        conn.execute(sa.insert(webhook_attempts).values(delivery_id=delivery_id, **attempt))
        values: dict[str, Any] = {"status": status, "attempts": attempt["attempt"], "next_attempt_at": next_attempt_at,
                                  "last_status_code": attempt["status_code"], "last_error": attempt["error"]}
        if status == "delivered":
            values["delivered_at"] = attempt["at"]
        conn.execute(sa.update(webhook_deliveries).where(webhook_deliveries.c.id == delivery_id).values(**values))

    def deliveries(self, account_id: str, task_id: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        query = sa.select(webhook_deliveries).where(webhook_deliveries.c.account_id == account_id)
        if task_id is not None:
            query = query.where(webhook_deliveries.c.task_id == task_id)
        query = query.order_by(webhook_deliveries.c.created_at.desc()).limit(limit)
        with self.engine.connect() as conn:
            rows = [dict(r._mapping) for r in conn.execute(query).all()]
            ids = [r["id"] for r in rows]
            attempts = conn.execute(sa.select(webhook_attempts).where(webhook_attempts.c.delivery_id.in_(ids))
                                    .order_by(webhook_attempts.c.id)).all() if ids else []
        by_delivery: dict[str, list[dict[str, Any]]] = {}
        for a in attempts:
            by_delivery.setdefault(a.delivery_id, []).append(dict(a._mapping))
        for row in rows:
            row["attempt_log"] = by_delivery.get(row["id"], [])
        return rows

    @writes
    def redeliver(self, conn: sa.Connection, account_id: str, delivery_id: str, now: float) -> bool:
        return conn.execute(
            sa.update(webhook_deliveries)
            .where(webhook_deliveries.c.id == delivery_id, webhook_deliveries.c.account_id == account_id)
            .values(status="pending", next_attempt_at=now)
        ).rowcount == 1

    # -- assets ------------------------------------------------------------------------------

    @writes
    def insert_assets(self, conn: sa.Connection, rows: list[dict[str, Any]]) -> None:
        if rows:
            conn.execute(sa.insert(assets), rows)

    def get_asset(self, token: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(assets).where(assets.c.token == token)).first()
        return dict(row._mapping) if row else None

    def assets_of(self, task_id: str) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(assets).where(assets.c.task_id == task_id)).all()
        return [dict(r._mapping) for r in rows]

    def expired_assets(self, now: float, limit: int = 500) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(assets.c.token, assets.c.path).where(assets.c.expires_at <= now).limit(limit)
            ).all()
        return [dict(r._mapping) for r in rows]

    @writes
    def delete_assets(self, conn: sa.Connection, tokens: list[str]) -> None:
        if tokens:
            conn.execute(sa.delete(assets).where(assets.c.token.in_(tokens)))
