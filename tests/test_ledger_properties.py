"""Property-based tests of the credit ledger, on SQLite and PostgreSQL.

A hypothesis state machine drives one account (a key without limits and a key with a spend cap)
through random interleavings of submit, start, complete, fail, cancel, timeout, stale-lease and
replayed settlements, top-ups, code creation and redemption, and the clock. A small Python model
predicts every outcome; after each step the database must agree with the model *and* with its own
ledger. What that proves, for every interleaving hypothesis tries:

* money is conserved: credits + held + spent == added, and the balance (credits + held)
  == top-ups + redemptions - captures, summed from the ledger;
* held == the holds of the live (queued/running) tasks == ``Store.live_holds()``;
* nothing is negative: credits, held, spent, key spend, every ledger amount;
* a task's hold is in the ledger exactly once; a task is settled at most once, and then
  capture + release == its hold (capture = min(charge, hold)); any second settle attempt
  (replayed complete, cancel after timeout, complete after cancel, a stale lease) is refused and
  changes nothing;
* submit is refused with "key_spend_cap" exactly when key spent + hold > cap, else with
  "insufficient_credits" exactly when hold > available credits, and a refused submit writes
  nothing; a release gives the key's cap room back;
* a code redeems "ok" once, then "used"; an expired code says "expired", an unknown one "unknown".
"""

from __future__ import annotations

import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    multiple,
    rule,
    run_state_machine_as_test,
)

from tidehub.core.accounts import create_codes, new_code, normalise_code
from tidehub.core.auth import create_key, hash_key
from tidehub.store import Store
from tidehub.store.schema import accounts, api_keys, ledger, redemption_codes, tasks

SETTINGS = settings(
    max_examples=40,
    stateful_step_count=30,
    deadline=None,
    database=None,  # no .hypothesis/ directory in the checkout; failures print their steps
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

ACTIVE = ("queued", "running")
LEASE = "w"
SETTLES = ("complete", "fail", "canceled", "timeout", "stale complete", "stale fail")


@dataclass
class ModelTask:
    hold: int
    key_id: str
    status: str = "queued"
    captured: int = 0
    released: int = 0


@dataclass
class ModelCode:
    credits: int
    expires_at: float | None
    used: bool = False


def task_row(task_id: str, account_id: str, key_id: str, hold: int, now: float) -> dict[str, Any]:
    return {
        "id": task_id, "account_id": account_id, "key_id": key_id, "model": "m", "endpoint": "e",
        "capability": "image", "mode": "text-to-image", "input": {"prompt": "x"}, "status": "queued",
        "progress": 0, "attempts": 0, "cancel_upstream": False, "next_check_at": now,
        "deadline_at": now + 60, "created_at": now, "updated_at": now, "held": hold, "captured": 0,
    }


class LedgerMachine(RuleBasedStateMachine):
    """One run = one empty database (the store is shared by the runs of a test, wiped here)."""

    store: Store  # set by the test

    task_ids = Bundle("task_ids")
    codes = Bundle("codes")

    def __init__(self) -> None:
        super().__init__()
        with self.store.engine.begin() as conn:
            for table in (ledger, tasks, redemption_codes, api_keys, accounts):
                conn.execute(sa.delete(table))
        self.now = 1_000_000.0
        self.account_id = ""
        self.free_key = self.capped_key = ""
        self.cap = 0
        # The model.
        self.credits = self.held = self.spent = self.added = 0
        self.topups = self.redeemed = 0
        self.key_spent: dict[str, int] = {}
        self.model_tasks: dict[str, ModelTask] = {}
        self.model_codes: dict[str, ModelCode] = {}

    # -- helpers -------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Every row the ledger code could touch, to prove a refused operation wrote nothing."""
        with self.store.engine.connect() as conn:
            return {
                t.name: sorted(tuple(r) for r in conn.execute(sa.select(t)).all())
                for t in (accounts, api_keys, tasks, ledger, redemption_codes)
            }

    def assert_unchanged(self, before: dict[str, Any] | None, what: str) -> None:
        assert before is not None
        after = self.snapshot()
        for table in before:
            assert before[table] == after[table], f"{what} was refused but changed table {table}"

    def finished(self, status: str) -> dict[str, Any]:
        return {"status": status, "finished_at": self.now, "updated_at": self.now,
                "lease_owner": None, "lease_until": None}

    def settle_model(self, task_id: str, status: str, charge: int) -> None:
        t = self.model_tasks[task_id]
        capture = min(charge, t.hold)
        release = t.hold - capture
        t.status, t.captured, t.released = status, capture, release
        self.held -= t.hold
        self.credits += release
        self.spent += capture
        self.key_spent[t.key_id] -= release

    def _start(self, task_id: str) -> None:
        t = self.model_tasks[task_id]
        expected = t.status == "queued"
        before = None if expected else self.snapshot()
        applied = self.store.tasks.update(task_id, {"status": "running", "lease_owner": LEASE},
                                         status_in=("queued",))
        assert applied == expected, f"start of a {t.status} task: applied={applied}"
        if applied:
            t.status = "running"
        else:
            self.assert_unchanged(before, f"start of a {t.status} task")

    def _settle(self, task_id: str, status: str, charge: int, attempt: Any) -> None:
        """Run one settle attempt; it must apply exactly when the model says the task is live."""
        t = self.model_tasks[task_id]
        live = t.status in ACTIVE
        before = None if live else self.snapshot()
        applied = attempt()
        if not live:
            assert not applied, (
                f"BUG: task {task_id} settled twice: {status} applied to a task already {t.status}")
            self.assert_unchanged(before, f"{status} of a {t.status} task")
            return
        assert applied, f"{status} of a live ({t.status}) task was refused"
        self.settle_model(task_id, status, charge)

    # -- rules -------------------------------------------------------------------------------

    @initialize(credits=st.integers(0, 300), cap=st.integers(0, 150))
    def open_account(self, credits: int, cap: int) -> None:
        free = create_key(self.store, name="free", credits=credits)
        capped = create_key(self.store, name="capped", account_id=free.account_id, spend_cap=cap)
        self.account_id, self.free_key, self.capped_key, self.cap = free.account_id, free.key_id, capped.key_id, cap
        self.credits = self.added = self.topups = credits
        self.key_spent = {free.key_id: 0, capped.key_id: 0}

    @rule(target=task_ids, hold=st.integers(0, 60), use_cap=st.booleans())
    def submit(self, hold: int, use_cap: bool) -> Any:
        key_id = self.capped_key if use_cap else self.free_key
        task_id = f"t-{uuid.uuid4().hex[:12]}"
        expected = None
        if hold:
            if use_cap and self.key_spent[key_id] + hold > self.cap:
                expected = "key_spend_cap"
            elif hold > self.credits:
                expected = "insufficient_credits"
        before = self.snapshot() if expected else None
        refused = self.store.tasks.open(task_row(task_id, self.account_id, key_id, hold, self.now))
        assert refused == expected, (
            f"submit of {hold} (credits {self.credits}, key spent {self.key_spent[key_id]}, "
            f"cap {self.cap if use_cap else None}): got {refused!r}, expected {expected!r}")
        if refused is not None:
            self.assert_unchanged(before, f"submit ({refused})")
            assert self.store.tasks.get(task_id) is None
            return multiple()
        self.model_tasks[task_id] = ModelTask(hold, key_id)
        self.credits -= hold
        self.held += hold
        self.key_spent[key_id] += hold
        return task_id

    @rule(task=task_ids)
    def start(self, task: str) -> None:
        self._start(task)

    @rule(task=task_ids, how=st.sampled_from(SETTLES), charge=st.integers(0, 120))
    def settle(self, task: str, how: str, charge: int) -> None:
        """One way out of an active status, tried on live and on already-settled tasks alike."""
        if how == "complete":
            self._start(task)  # the engine claims and runs a task before it can complete or fail it
            self._settle(task, "succeeded", charge, lambda: self.store.tasks.complete(
                task, LEASE, self.finished("succeeded"), [], charge))
        elif how == "fail":
            self._start(task)
            self._settle(task, "failed", 0, lambda: self.store.tasks.fail(task, LEASE, self.finished("failed")))
        elif how in ("canceled", "timeout"):
            self._settle(task, how, 0, lambda: self.store.tasks.end_active(task, how, how, "by test", self.now))
        else:  # a worker whose lease was taken over: its complete or fail must never apply
            before = self.snapshot()
            if how == "stale complete":
                applied = self.store.tasks.complete(task, "stale", self.finished("succeeded"), [], charge)
            else:
                applied = self.store.tasks.fail(task, "stale", self.finished("failed"))
            assert not applied, f"a {how} by a worker that does not hold the lease applied"
            self.assert_unchanged(before, how)

    @rule(amount=st.integers(1, 100))
    def topup(self, amount: int) -> None:
        assert self.store.accounts.add_credits(self.account_id, amount, self.now, "test")
        self.credits += amount
        self.added += amount
        self.topups += amount

    @rule(target=codes, credits=st.integers(1, 100), expires_in=st.none() | st.integers(-2, 3))
    def create_code(self, credits: int, expires_in: int | None) -> str:
        expires_at = None if expires_in is None else self.now + expires_in
        [code] = create_codes(self.store, credits, 1, expires_at)
        self.model_codes[code] = ModelCode(credits, expires_at)
        return code

    @rule(code=codes | st.builds(new_code), sloppy=st.booleans())
    def redeem(self, code: str, sloppy: bool) -> None:
        """A code made by create_code, or one never issued (built here, so "unknown")."""
        typed = f"  {code.lower()} " if sloppy else code
        c = self.model_codes.get(code)
        if c is None:
            expected = ("unknown", 0)
        elif c.used:
            expected = ("used", 0)
        elif c.expires_at is not None and c.expires_at <= self.now:
            expected = ("expired", 0)
        else:
            expected = ("ok", c.credits)
        before = self.snapshot() if expected[0] != "ok" else None
        got = self.store.codes.redeem(hash_key(normalise_code(typed)), self.account_id, self.now)
        assert tuple(got) == expected, f"redeem: got {got}, expected {expected}"
        if c is None or expected[0] != "ok":
            self.assert_unchanged(before, f"redeem ({expected[0]})")
            return
        c.used = True
        self.credits += c.credits
        self.added += c.credits
        self.redeemed += c.credits

    @rule(seconds=st.integers(1, 3))
    def tick(self, seconds: int) -> None:
        self.now += seconds

    # -- invariants ------------------------------------------------------------------------------

    @invariant()
    def books_agree(self) -> None:
        """After every step: the account, its keys, its tasks and its ledger agree with the model."""
        if not self.account_id:
            return
        entries = self.store.accounts.ledger(self.account_id)
        self.check_money(entries)
        self.check_tasks(entries)

    def check_money(self, entries: list[dict[str, Any]]) -> None:
        row = self.store.accounts.get(self.account_id)
        assert row is not None
        money = {k: row[k] for k in ("credits", "held", "spent", "added")}
        assert money == {"credits": self.credits, "held": self.held, "spent": self.spent, "added": self.added}, (
            f"account {money} differs from the model")
        assert min(money.values()) >= 0, f"negative money: {money}"
        assert money["credits"] + money["held"] + money["spent"] == money["added"]

        assert all(e["amount"] > 0 for e in entries), f"a ledger entry is not positive: {entries}"
        by_kind: Counter[str] = Counter()
        for e in entries:
            by_kind[e["kind"]] += e["amount"]
        assert set(by_kind) <= {"topup", "redeem", "hold", "capture", "release"}
        assert by_kind["topup"] == self.topups and by_kind["redeem"] == self.redeemed
        # The balance (money not yet captured) is what came in minus what was captured.
        assert money["credits"] + money["held"] == by_kind["topup"] + by_kind["redeem"] - by_kind["capture"]
        assert money["added"] == by_kind["topup"] + by_kind["redeem"]
        assert money["spent"] == by_kind["capture"]
        assert money["held"] == by_kind["hold"] - by_kind["capture"] - by_kind["release"]

        # Holds: the account's held is exactly the live tasks' holds.
        live = sum(t.hold for t in self.model_tasks.values() if t.status in ACTIVE)
        assert money["held"] == live == self.store.tasks.live_holds().get(self.account_id, 0)

        # Keys: spent is what their live tasks hold plus what was captured from their tasks.
        for key in self.store.keys.list():
            assert key["spent"] >= 0
            assert key["spent"] == self.key_spent[key["id"]], f"key {key['id']} spent differs from the model"
            if key["spend_cap"] is not None:
                assert key["spent"] <= key["spend_cap"], f"key spent {key['spent']} is over its cap"

    def check_tasks(self, entries: list[dict[str, Any]]) -> None:
        """Each task: its hold in the ledger once; settled at most once, then capture + release == hold."""
        per_task: dict[str, Counter[str]] = {}
        for e in entries:
            if e["task_id"] is not None:
                kinds = per_task.setdefault(e["task_id"], Counter())
                assert e["kind"] not in kinds, f"task {e['task_id']} has two {e['kind']} entries"
                kinds[e["kind"]] = e["amount"]
        with self.store.engine.connect() as conn:
            rows = {r.id: r for r in conn.execute(sa.select(tasks).where(tasks.c.account_id == self.account_id))}
        assert set(rows) == set(self.model_tasks), "the tasks in the database are not the accepted submits"
        for task_id, t in self.model_tasks.items():
            got, row = per_task.get(task_id, Counter()), rows[task_id]
            assert row.status == t.status, f"task {task_id}: {row.status} in the database, {t.status} in the model"
            assert got["hold"] == t.hold, f"task {task_id}: hold in the ledger {got['hold']} vs {t.hold}"
            if t.status in ACTIVE:
                assert got["capture"] == got["release"] == 0 and row.captured == 0
            else:
                assert got["capture"] + got["release"] == t.hold, f"task {task_id}: capture + release != hold"
                assert (got["capture"], got["release"]) == (t.captured, t.released)
                assert row.captured == t.captured and row.held == t.hold


@pytest.fixture
def store(database_url: str):
    store = Store(database_url)
    yield store
    store.close()


def test_ledger_under_random_interleavings(store: Store) -> None:
    machine = type("Ledger", (LedgerMachine,), {"store": store})
    run_state_machine_as_test(machine, settings=SETTINGS)
