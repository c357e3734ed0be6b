"""Tasks: opening one with its hold, every move of the state machine (core/lifecycle.py) as a
compare-and-set that settles the money in the same transaction, the engine's claims, and the
reads over task rows (usage, records, queue positions)."""

from __future__ import annotations

import functools
import secrets
import time
from typing import Any, Iterable, Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from tidehub.core.lifecycle import ACTIVE, FROM, QUEUED, RUNNING, TERMINAL, finished
from tidehub.store import rollups
from tidehub.store.base import Queries, cursor_of, heavy, writes
from tidehub.store.events import append as append_events
from tidehub.store.schema import (ACTIVE_TASK, accounts, api_keys, assets, idempotency_keys, ledger, task_events,
                                  tasks, webhook_attempts, webhook_deliveries)

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
# A settlement: the hold leaves the account, the part not captured goes back to its balance and to
# the key's spending cap.
_SETTLE_ACCOUNT = (sa.update(accounts).where(accounts.c.id == sa.bindparam("s_account_id"))
                   .values(held=accounts.c.held - sa.bindparam("s_held", type_=sa.BigInteger),
                           credits=accounts.c.credits + sa.bindparam("s_release", type_=sa.BigInteger),
                           spent=accounts.c.spent + sa.bindparam("s_capture", type_=sa.BigInteger)))
_UNSPEND_KEY = (sa.update(api_keys).where(api_keys.c.id == sa.bindparam("s_key_id"))
                .values(spent=api_keys.c.spent - sa.bindparam("s_release", type_=sa.BigInteger)))
_LEDGER_COLUMNS = ("account_id", "task_id", "kind", "amount", "created_at", "note")
# Relayed calls spend from a credit block (a running task row holding credits): held moves to spent.
# Only a block still running may be spent from: once settled, its rest went back to the balance.
_SPEND_FROM_BLOCK = (sa.update(tasks).where(tasks.c.id == sa.bindparam("block_id"), tasks.c.status == RUNNING)
                     .values(held=tasks.c.held - _AMOUNT))
_SPEND_ON_ACCOUNT = (sa.update(accounts).where(accounts.c.id == sa.bindparam("account_id"))
                     .values(held=accounts.c.held - _AMOUNT, spent=accounts.c.spent + _AMOUNT))
# A call whose block was settled before the call was written pays from the balance, if it can.
_CHARGE_ON_ACCOUNT = (sa.update(accounts)
                      .where(accounts.c.id == sa.bindparam("account_id"), accounts.c.credits >= _AMOUNT)
                      .values(credits=accounts.c.credits - _AMOUNT, spent=accounts.c.spent + _AMOUNT))
_CHARGE_ON_KEY = (sa.update(api_keys).where(api_keys.c.id == sa.bindparam("key_id"))
                  .values(spent=api_keys.c.spent + _AMOUNT))
_NEW_TASK = sa.insert(tasks)
#: Task events to record with a write: (kind, data) pairs (store/events.py).
Events = Sequence[tuple[str, dict[str, Any]]]
#: The mode of a task row that is a relay's credit block, not a piece of work (core/wallet.py).
CREDIT_BLOCK = "credit-block"
# A queued task's place: the tasks queued before it, counted no further than the cap.
QUEUE_POSITION_CAP = 100  # a deeper queue reads as "100 ahead or more"
# The head of the queue, oldest first (through ix_tasks_status_created).
_QUEUE_HEAD = (sa.select(tasks.c.created_at).where(tasks.c.status == QUEUED)
               .order_by(tasks.c.created_at).limit(QUEUE_POSITION_CAP + 1))
def _status_in(statuses: Iterable[str]) -> sa.ColumnElement[bool]:
    """``status IN (...)`` with the statuses as literals, for statements run on the driver: an IN
    list given as one value would need expanding at each run."""
    return tasks.c.status.in_([sa.literal(s) for s in statuses])


# The engine's most frequent write: "nothing new upstream, look again later".
_RESCHEDULE = (
    sa.update(tasks)
    .where(tasks.c.id == sa.bindparam("task_id"), _status_in(ACTIVE),
           tasks.c.lease_owner == sa.bindparam("owner"))
    .values(next_check_at=sa.bindparam("next_check_at", type_=sa.Float(53)),
            updated_at=sa.bindparam("now", type_=sa.Float(53)),
            progress=sa.func.coalesce(sa.bindparam("progress", type_=sa.Integer), tasks.c.progress),
            queue_position=sa.bindparam("queue_position", type_=sa.Integer), lease_owner=None, lease_until=None)
)


@functools.lru_cache(maxsize=256)
def _update_of(keys: tuple[str, ...], statuses: tuple[str, ...] | None, leased: bool, owned: bool) -> sa.Update:
    """The compare-and-set ``TaskQueries.update`` runs, by shape (the columns set and the checks),
    so that each shape is compiled once (``Queries.prepared``). The shapes are the few the code
    makes."""
    where = [tasks.c.id == sa.bindparam("w_id")]
    if statuses is not None:
        where.append(_status_in(statuses))
    if leased:
        where.append(tasks.c.lease_owner == sa.bindparam("w_owner"))
    if owned:
        where.append(tasks.c.account_id == sa.bindparam("w_account"))
    return sa.update(tasks).where(*where).values({k: sa.bindparam(f"v_{k}", type_=tasks.c[k].type) for k in keys})


# What a settlement reads back: the money, the webhook, and the group and figures of the rollups.
_SETTLED = (tasks.c.id, tasks.c.mode, tasks.c.account_id, tasks.c.key_id, tasks.c.model, tasks.c.channel_id,
            tasks.c.user_identifier, tasks.c.status, tasks.c.held, tasks.c.captured, tasks.c.webhook_url,
            tasks.c.created_at, tasks.c.started_at, tasks.c.finished_at)
# A key's or an account's active tasks (credit blocks are not tasks), through the partial indexes.
_ACTIVE_OF = {
    column: sa.select(sa.func.count()).select_from(tasks).where(
        tasks.c[column] == sa.bindparam("owner"), ACTIVE_TASK, tasks.c.mode != CREDIT_BLOCK)
    for column in ("key_id", "account_id")
}


def _by_columns(rows: list[dict[str, Any]]) -> dict[tuple[str, ...], list[dict[str, Any]]]:
    shapes: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for row in rows:
        shapes.setdefault(tuple(row), []).append(row)
    return shapes


class TaskQueries(Queries):
    @writes
    def open(
        self, conn: sa.Connection, row: dict[str, Any], idempotency: tuple[str, str] | None = None,
        bounds: list[tuple[str, str, int]] | None = None,
    ) -> str | None:
        """Hold the task's price and write the task, in one transaction. Returns None, or the code
        of the reason it was refused (nothing is written then). With ``idempotency`` (key, request
        hash), the key is recorded too, only once the task is accepted: a refusal leaves the key free
        for the retry. A key used already makes the whole write fail (DuplicateKey). ``bounds``
        (column, id, most active tasks already there) are the key's and account's concurrency
        limits (core/limits.py), counted in this transaction so they hold across processes."""
        if bounds:
            if self.dialect == "postgresql":
                # Submits of one account take turns here, so each counts the ones before it.
                conn.execute(sa.select(sa.func.pg_advisory_xact_lock(sa.func.hashtext(row["account_id"]))))
            for column, owner, most in bounds:
                if conn.execute(_ACTIVE_OF[column], {"owner": owner}).scalar_one() >= most:
                    return f"{'key' if column == 'key_id' else 'account'}_concurrency"
        cursor = cursor_of(conn)  # the statements of every submit, run on the driver (store/base.py)
        hold = row["held"]
        if hold:
            # The key's cap first, then the balance; each a conditional update, so however many
            # submits race, none passes a check another one has already used up.
            who = {"key_id": row["key_id"], "account_id": row["account_id"], "amount": hold}
            if self.prepared(_HOLD_ON_KEY).execute(cursor, who).rowcount != 1:
                return "key_spend_cap"
            if self.prepared(_HOLD_ON_ACCOUNT).execute(cursor, who).rowcount != 1:
                self.prepared(_UNHOLD_ON_KEY).execute(cursor, who)
                return "insufficient_credits"
            self.prepared(_LEDGER_ENTRY, _LEDGER_COLUMNS).execute(cursor, {
                "account_id": row["account_id"], "task_id": row["id"], "kind": "hold", "amount": hold,
                "created_at": row["created_at"], "note": None})
        if idempotency is not None:
            conn.execute(sa.insert(idempotency_keys).values(
                account_id=row["account_id"], key=idempotency[0], request_hash=idempotency[1], task_id=row["id"],
                created_at=row["created_at"]))
        # The columns with a value: a new task leaves a dozen empty, which stay NULL unbound.
        self.prepared(_NEW_TASK, [k for k, v in row.items() if v is not None]).execute(cursor, row)
        if row["mode"] != CREDIT_BLOCK:
            append_events(conn, row["id"], [("status", {"status": row["status"]})], row["created_at"], first=True)
        return None

    def _settle(self, conn: sa.Connection, task_id: str, where: list[Any], values: dict[str, Any],
                charge: int, now: float, events: Events = ()) -> bool:
        """The one way out of an active status: compare-and-set the task, then capture ``charge``
        (at most the hold) and release the rest, add the task to the usage rollups, and write the
        terminal status event (after ``events``, what the last look at the upstream brought). All of
        it happens, or none."""
        charge = max(0, charge)  # a charge never pays the customer
        row = conn.execute(
            sa.update(tasks).where(tasks.c.id == task_id, *where)
            .values(**values, captured=sa.case((tasks.c.held < charge, tasks.c.held), else_=charge))
            .returning(*_SETTLED)
        ).first()
        if row is None:
            return False
        rollups.add(conn, [{**row._mapping, "output": values.get("output")}])
        if row.mode != CREDIT_BLOCK:
            ending = {"status": values["status"]}
            if values.get("error_code") is not None:
                ending.update(error_code=values["error_code"], error_message=values.get("error_message"))
            append_events(conn, task_id, [*events, ("status", ending)], now)
        if row.webhook_url:
            # The outbox: the client's webhook is owed exactly when the task is final.
            conn.execute(sa.insert(webhook_deliveries).values(
                id=f"msg_{secrets.token_hex(12)}", account_id=row.account_id, task_id=task_id, url=row.webhook_url,
                status="pending", next_attempt_at=now, created_at=now))
        capture, release = row.captured, row.held - row.captured
        entries = [
            {"account_id": row.account_id, "task_id": task_id, "kind": kind, "amount": amount, "created_at": now,
             "note": None}
            for kind, amount in (("capture", capture), ("release", release))
            if amount
        ]
        cursor = cursor_of(conn)  # the money's statements on the driver, as at submit
        if entries:
            self.prepared(_LEDGER_ENTRY, _LEDGER_COLUMNS).execute_many(cursor, entries)
        if row.held:
            self.prepared(_SETTLE_ACCOUNT).execute(cursor, {
                "s_account_id": row.account_id, "s_held": row.held, "s_release": release, "s_capture": capture})
            if release:
                self.prepared(_UNSPEND_KEY).execute(cursor, {"s_key_id": row.key_id, "s_release": release})
        return True

    def active_count(self, key_id: str, account_id: str) -> tuple[int, int]:
        """Active tasks of a key and of its account."""
        with self.engine.connect() as conn:
            return (conn.execute(_ACTIVE_OF["key_id"], {"owner": key_id}).scalar_one(),
                    conn.execute(_ACTIVE_OF["account_id"], {"owner": account_id}).scalar_one())

    def gauges(self) -> dict[str, Any]:
        """For a metrics scrape: tasks queued, tasks running per channel (both through the status
        indexes, so they cost what is live, not what is kept), and credits held and captured."""
        with self.engine.connect() as conn:
            queued = conn.execute(sa.select(sa.func.count()).select_from(tasks)
                                  .where(tasks.c.status == QUEUED)).scalar_one()
            running = conn.execute(sa.select(tasks.c.channel_id, sa.func.count())
                                   .where(tasks.c.status == RUNNING, tasks.c.channel_id.is_not(None))
                                   .group_by(tasks.c.channel_id)).all()
            held, spent = conn.execute(sa.select(sa.func.coalesce(sa.func.sum(accounts.c.held), 0),
                                                 sa.func.coalesce(sa.func.sum(accounts.c.spent), 0))).one()
        return {"queued": int(queued), "running": {c: int(n) for c, n in running},
                "held": int(held), "captured": int(spent)}

    def get(self, task_id: str, account_id: str | None = None) -> dict[str, Any] | None:
        """A task by id; with ``account_id``, only if it belongs to that account."""
        if account_id is None:
            return self.fetch_one(_TASK, {"id": task_id})
        return self.fetch_one(_ACCOUNT_TASK, {"id": task_id, "account_id": account_id})

    @writes
    def update(
        self,
        conn: sa.Connection,
        task_id: str,
        values: dict[str, Any],
        *,
        status_in: Iterable[str] | None = None,
        lease_owner: str | None = None,
        account_id: str | None = None,
        events: Events = (),
    ) -> bool:
        """Compare-and-set: apply ``values`` (plain values, not SQL expressions) only if the task is
        still in one of ``status_in`` (and still leased by ``lease_owner``), and record ``events``
        with it. Returns whether it applied."""
        # On the driver (store/base.py), compiled once per shape: every engine step comes here.
        statement = _update_of(tuple(sorted(values)), tuple(status_in) if status_in is not None else None,
                               lease_owner is not None, account_id is not None)
        params = {f"v_{k}": v for k, v in values.items()}
        params.update(w_id=task_id, w_owner=lease_owner, w_account=account_id)
        applied = self.prepared(statement).execute(cursor_of(conn), params).rowcount == 1
        if not applied:
            return False
        append_events(conn, task_id, events, values.get("updated_at") or time.time())
        return True

    @writes
    def reschedule(
        self, conn: sa.Connection, task_id: str, owner: str, next_check_at: float, now: float,
        progress: int | None, queue_position: int | None, events: Events = (),
    ) -> bool:
        params = {"task_id": task_id, "owner": owner, "next_check_at": next_check_at, "now": now,
                  "progress": progress, "queue_position": queue_position}
        if self.prepared(_RESCHEDULE).execute(cursor_of(conn), params).rowcount != 1:
            return False
        append_events(conn, task_id, events, now)
        return True

    @writes
    def reserve_channel(
        self, conn: sa.Connection, task_id: str, owner: str, channel_id: str, limit: int | None
    ) -> bool:
        """Claim a slot on a channel for a task about to be submitted there. With a ``limit``, only
        while fewer than that many tasks hold or run on the channel, counted in the same statement,
        so the limit holds across processes."""
        query = sa.update(tasks).where(tasks.c.id == task_id, tasks.c.status == QUEUED,
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
    def nudge(self, conn: sa.Connection, task_id: str, upstream_ref: str, now: float) -> bool:
        """An upstream callback says the job moved: check it now rather than at the next poll."""
        return conn.execute(
            sa.update(tasks)
            .where(tasks.c.id == task_id, tasks.c.upstream_ref == upstream_ref, tasks.c.status == RUNNING)
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
        where = [tasks.c.status.in_(FROM[status])]
        if account_id is not None:
            where.append(tasks.c.account_id == account_id)
        values = finished(status, now, code=code, message=message, cancel_upstream=has_job)
        values["next_check_at"] = sa.case((has_job, now), else_=None)
        return self._settle(conn, task_id, where, values, 0, now)

    @writes
    def complete(
        self,
        conn: sa.Connection,
        task_id: str,
        lease_owner: str,
        values: dict[str, Any],
        asset_rows: list[dict[str, Any]],
        charge: int,
        events: Events = (),
    ) -> bool:
        """Finish a running task: capture its charge and record its files, in one transaction."""
        where = [tasks.c.status.in_(FROM[values["status"]]), tasks.c.lease_owner == lease_owner]
        if not self._settle(conn, task_id, where, values, charge, values["finished_at"], events):
            return False
        if asset_rows:
            conn.execute(sa.insert(assets), asset_rows)
        return True

    @writes
    def record_calls(self, conn: sa.Connection, calls: dict[str, list[dict[str, Any]]]) -> None:
        """Write finished relayed calls (settled rows: held = captured = their charge) by the credit
        block each was reserved from, and move what they cost out of their block, from held to
        spent. A block that is no longer running (its lease ran out and the engine gave its rest
        back) is never spent from: its calls pay from the balance, each with a hold and a capture of
        its own, and a call the balance cannot pay is free. Nothing goes below zero.

        The ledger notes the money where it moves: a block's one capture entry grows by what its
        calls spent, so a block reads hold = capture + release once closed. What each call cost is
        on its own row (and in the rollups); a ledger entry per call would repeat it."""
        rows: list[dict[str, Any]] = []
        entries: list[dict[str, Any]] = []
        block_captures: list[dict[str, Any]] = []
        for block_id in sorted(calls):  # one order for every writer: no deadlock between two on PostgreSQL
            block_calls = calls[block_id]
            rows.extend(block_calls)
            amount = sum(r["captured"] for r in block_calls)
            if not amount:
                continue
            account_id = block_calls[0]["account_id"]
            who = {"block_id": block_id, "account_id": account_id, "amount": amount}
            if conn.execute(_SPEND_FROM_BLOCK, who).rowcount == 1:
                conn.execute(_SPEND_ON_ACCOUNT, who)
                block_captures.append({"account_id": account_id, "task_id": block_id, "kind": "capture",
                                       "amount": amount, "note": None,
                                       "created_at": max(r["finished_at"] for r in block_calls)})
                continue
            for r in block_calls:
                charge = {"account_id": r["account_id"], "key_id": r["key_id"], "amount": r["captured"]}
                if r["captured"] and conn.execute(_CHARGE_ON_ACCOUNT, charge).rowcount == 1:
                    conn.execute(_CHARGE_ON_KEY, charge)
                    entries.extend({"account_id": r["account_id"], "task_id": r["id"], "kind": kind,
                                    "amount": r["captured"], "created_at": r["finished_at"], "note": None}
                                   for kind in ("hold", "capture"))
                else:
                    r["held"] = r["captured"] = 0
        if rows:
            cursor = cursor_of(conn)  # many rows of one shape: run on the driver (store/base.py)
            for columns, shaped in _by_columns(rows).items():
                self.prepared(_NEW_TASK, columns).execute_many(cursor, shaped)
            rollups.add(conn, rows)
        if entries:
            conn.execute(_LEDGER_ENTRY, entries)
        if block_captures:
            conn.execute(self._capture_on_block, block_captures)

    @functools.cached_property
    def _capture_on_block(self) -> Any:
        insert = (postgresql.insert if self.dialect == "postgresql" else sqlite.insert)(ledger)
        return insert.on_conflict_do_update(index_elements=["task_id", "kind"],
                                            set_={"amount": ledger.c.amount + insert.excluded.amount})

    @writes
    def renew_leases(self, conn: sa.Connection, task_ids: list[str], lease_owner: str, until: float) -> set[str]:
        """Extend the leases ``lease_owner`` still holds on these running tasks; the ids renewed
        (a task missing from the answer was settled or taken over)."""
        renewed = conn.execute(
            sa.update(tasks)
            .where(tasks.c.id.in_(task_ids), tasks.c.status == RUNNING, tasks.c.lease_owner == lease_owner)
            .values(lease_until=until, next_check_at=until)
            .returning(tasks.c.id)
        )
        return {row.id for row in renewed}

    @writes
    def fail(self, conn: sa.Connection, task_id: str, lease_owner: str, values: dict[str, Any],
             events: Events = ()) -> bool:
        """An engine-side failure: free, so the hold goes back."""
        where = [tasks.c.status.in_(FROM[values["status"]]), tasks.c.lease_owner == lease_owner]
        return self._settle(conn, task_id, where, values, 0, values["finished_at"], events)

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

    @writes
    def forget(self, conn: sa.Connection, before: float, limit: int) -> int:
        """Delete up to ``limit`` settled tasks made before ``before``, oldest first, with the rows
        that hang off them (ledger entries, webhook deliveries and their attempts, idempotency
        keys, events). Their usage stays in the rollups; their result files keep their own expiry. A small
        batch keeps the write lock short; returns how many tasks went."""
        ids = [r.id for r in conn.execute(
            sa.select(tasks.c.id).where(tasks.c.created_at < before, tasks.c.status.in_(TERMINAL))
            .order_by(tasks.c.created_at).limit(limit))]
        if not ids:
            return 0
        deliveries = sa.select(webhook_deliveries.c.id).where(webhook_deliveries.c.task_id.in_(ids))
        conn.execute(sa.delete(webhook_attempts).where(webhook_attempts.c.delivery_id.in_(deliveries)))
        for table in (webhook_deliveries, ledger, idempotency_keys, task_events):
            conn.execute(sa.delete(table).where(table.c.task_id.in_(ids)))
        conn.execute(sa.delete(tasks).where(tasks.c.id.in_(ids)))
        return len(ids)

    def queue_head(self) -> list[float]:
        """When each of the oldest QUEUE_POSITION_CAP + 1 tasks waiting in Tidehub's own queue was
        submitted, oldest first: enough to place any queued task, up to the cap, however long the queue."""
        with self.engine.connect() as conn:
            return [float(t) for t in conn.execute(_QUEUE_HEAD).scalars()]

    def next_due_at(self) -> float | None:
        with self.engine.connect() as conn:
            return conn.execute(sa.select(sa.func.min(tasks.c.next_check_at))).scalar()

    @heavy
    def count(self, statuses: Iterable[str]) -> int:
        with self.engine.connect() as conn:
            return conn.execute(
                sa.select(sa.func.count()).select_from(tasks).where(tasks.c.status.in_(tuple(statuses)))
            ).scalar_one()

    @heavy
    def live_usage(
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
        """Tasks still queued or running, and what they hold, by day, model or user_identifier: the
        part of usage the rollups (store/rollups.py) do not have yet, since they take tasks as they settle."""
        if group_by == "day":
            # Days in UTC; a float epoch divides the same way on every backend.
            key = sa.cast(sa.func.floor(tasks.c.created_at / 86400), sa.BigInteger)
        else:
            key = {"model": tasks.c.model, "user_identifier": tasks.c.user_identifier}[group_by]
        where = [tasks.c.status.in_(ACTIVE), tasks.c.account_id == account_id, tasks.c.mode != CREDIT_BLOCK]
        for column, value in ((tasks.c.model, model), (tasks.c.user_identifier, user_identifier),
                              (tasks.c.key_id, key_id)):
            if value is not None:
                where.append(column == value)
        if since is not None:
            where.append(tasks.c.created_at >= since)
        if until is not None:
            where.append(tasks.c.created_at < until)
        query = (sa.select(key.label("group"), sa.func.count().label("tasks"), sa.func.sum(tasks.c.held).label("held"))
                 .where(*where).group_by(key))
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(query).all()]

    @heavy
    def live_counts(self, since: float) -> dict[str, int]:
        """Tasks submitted since ``since`` and not settled yet (so not in the rollups), by status."""
        query = (sa.select(tasks.c.status, sa.func.count())
                 .where(tasks.c.status.in_(ACTIVE), tasks.c.created_at >= since, tasks.c.mode != CREDIT_BLOCK)
                 .group_by(tasks.c.status))
        with self.engine.connect() as conn:
            return {status: int(n) for status, n in conn.execute(query).all()}

    @heavy
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

    @heavy
    def live_holds(self) -> dict[str, int]:
        """Held credits of live tasks per account (what accounts.held must equal)."""
        query = (sa.select(tasks.c.account_id, sa.func.sum(tasks.c.held))
                 .where(tasks.c.status.in_(ACTIVE)).group_by(tasks.c.account_id))
        with self.engine.connect() as conn:
            return {a: int(h or 0) for a, h in conn.execute(query).all()}
