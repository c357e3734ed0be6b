"""Tasks: opening one with its hold, every move of the state machine (core/lifecycle.py) as a
compare-and-set that settles the money in the same transaction, the engine's claims, and the
reads over task rows (usage, records, queue positions)."""

from __future__ import annotations

import secrets
from typing import Any, Iterable

import sqlalchemy as sa

from tidehub.core.lifecycle import ACTIVE, FROM, QUEUED, RUNNING, SUCCEEDED, finished
from tidehub.store.base import Queries, heavy, writes
from tidehub.store.schema import ACTIVE_TASK, accounts, api_keys, assets, idempotency_keys, ledger, tasks, webhook_deliveries

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
          .where(tasks.c.status == QUEUED, tasks.c.created_at < sa.bindparam("created_at"),
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


# A key's or an account's active tasks (credit blocks are not tasks), through the partial indexes.
_ACTIVE_OF = {
    column: sa.select(sa.func.count()).select_from(tasks).where(
        tasks.c[column] == sa.bindparam("owner"), ACTIVE_TASK, tasks.c.mode != CREDIT_BLOCK)
    for column in ("key_id", "account_id")
}


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
        if idempotency is not None:
            conn.execute(sa.insert(idempotency_keys).values(
                account_id=row["account_id"], key=idempotency[0], request_hash=idempotency[1], task_id=row["id"],
                created_at=row["created_at"]))
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
        with self.engine.connect() as conn:
            if account_id is None:
                row = conn.execute(_TASK, {"id": task_id}).first()
            else:
                row = conn.execute(_ACCOUNT_TASK, {"id": task_id, "account_id": account_id}).first()
        return dict(row._mapping) if row else None

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
    ) -> bool:
        """Finish a running task: capture its charge and record its files, in one transaction."""
        where = [tasks.c.status.in_(FROM[values["status"]]), tasks.c.lease_owner == lease_owner]
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
    def fail(self, conn: sa.Connection, task_id: str, lease_owner: str, values: dict[str, Any]) -> bool:
        """An engine-side failure: free, so the hold goes back."""
        where = [tasks.c.status.in_(FROM[values["status"]]), tasks.c.lease_owner == lease_owner]
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

    @heavy
    def count(self, statuses: Iterable[str]) -> int:
        with self.engine.connect() as conn:
            return conn.execute(
                sa.select(sa.func.count()).select_from(tasks).where(tasks.c.status.in_(tuple(statuses)))
            ).scalar_one()

    @heavy
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
        succeeded = sa.case((tasks.c.status == SUCCEEDED, 1), else_=0)
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
