"""Memory and CPU of the gateway with 10,000 tasks in flight, and completion-to-visible latency.

    python bench/inflight.py [--tasks 10000] [--time-scale 1.5] [--concurrency 64]
                             [--database-url URL] [--lag-sample 300] [--deadline 900] [--json-out PATH]
                             [--gateway-env TIDEHUB_NAME=VALUE ...]

One `tidehub sim` and one `tidehub serve` (bench/harness.py). The client submits ``--tasks`` veo-3.1
videos (8 s clips) as fast as the gateway takes them, ``--concurrency`` requests at a time, then
watches them until every task is terminal:

* every second: the gateway's RSS and CPU (% of one core), the simulator's CPU, and the task counts
  per status read from the gateway's database (read-only), plus how many tasks have been due for the
  engine for more than a second (the engine's backlog);
* for ``--lag-sample`` random tasks, completion-to-visible latency. The simulator's status endpoint
  (with ``?logs=1``, as fal's) stamps its logs with the planned start, the progress steps and the
  moment the output was ready, so for each sampled task the client reads its upstream request id
  from the database, learns the planned finish from the simulator, polls the gateway every 0.5 s
  from just before then until the task is terminal, and finally reads the simulator's real finish:
    - gateway lag = the task's finished_at in the gateway - the simulator's finish;
    - visible lag = the first 0.5 s poll that saw the task terminal - the simulator's finish.

All tasks use one prompt, so the simulator renders one video and serves it to every task (the
gateway still downloads and stores one copy per task): the simulator's own CPU stays small.
At time scale 1.5 a veo-3.1 8 s clip spends about 90 s (63-117 s) in the upstream.
Everything goes to 127.0.0.1; every loop has a deadline.

The gateway and simulator run the ``tidehub`` that ``python -m tidehub`` finds. To measure a fixed
commit while the checkout is being edited, export it and run from outside the checkout:

    git archive HEAD tidehub | tar -x -C /tmp/snap
    cd /tmp && PYTHONPATH=/tmp/snap python /path/to/bench/inflight.py
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import random
import shlex
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp

from harness import SIM_KEY, Stack, cpu_seconds, machine, stack

MODEL = "veo-3.1"
PROMPT = "a lighthouse at dawn, waves rolling in"
DURATION = "8s"
ACTIVE = ("queued", "running")
TERMINAL = ("succeeded", "failed", "timeout", "canceled")
GATEWAY_POLL_S = 0.5


# -- reading the gateway's database (read-only) --------------------------------------------------


class DbReader:
    """Counts and a few columns from the gateway's tasks table, never a write."""

    def __init__(self, data_dir: Path, database_url: str) -> None:
        self._lock = threading.Lock()
        self._sqlite: sqlite3.Connection | None = None
        self._engine: Any = None
        if database_url:
            import sqlalchemy as sa

            url = database_url
            if url.startswith(("postgresql://", "postgres://")):
                url = "postgresql+psycopg://" + url.split("://", 1)[1]
            self._engine = sa.create_engine(url, pool_size=2, max_overflow=0)
            self.kind = self._engine.dialect.name
        else:
            path = (data_dir / "tidehub.db").resolve()
            # Autocommit (isolation_level=None): every SELECT is its own snapshot, no read
            # transaction stays open to hold back the gateway's WAL checkpoints.
            self._sqlite = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None,
                                           timeout=10, check_same_thread=False)
            self.kind = "sqlite"

    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            if self._sqlite is not None:
                return self._sqlite.execute(sql, params).fetchall()
            import sqlalchemy as sa

            # Turn '?' placeholders into named ones for SQLAlchemy.
            names = {f"p{i}": v for i, v in enumerate(params)}
            parts = sql.split("?")
            text = "".join(p + (f":p{i}" if i < len(parts) - 1 else "") for i, p in enumerate(parts))
            with self._engine.connect() as conn:
                return [tuple(r) for r in conn.execute(sa.text(text), names).all()]

    def status_counts(self) -> dict[str, int]:
        return {status: n for status, n in self._query("SELECT status, count(*) FROM tasks GROUP BY status")}

    def overdue(self, now: float, grace_s: float = 1.0) -> tuple[int, float]:
        """Tasks due for the engine for more than ``grace_s`` (waiting, or in a step), and the oldest's age."""
        n, oldest = self._query("SELECT count(*), min(next_check_at) FROM tasks WHERE next_check_at < ?",
                                (now - grace_s,))[0]
        return int(n or 0), (now - oldest) if oldest is not None else 0.0

    def rows(self, ids: list[str]) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for start in range(0, len(ids), 400):
            chunk = ids[start:start + 400]
            marks = ",".join("?" * len(chunk))
            for tid, status, ref, upstream, finished_at, attempts in self._query(
                f"SELECT id, status, upstream_ref, upstream, finished_at, attempts FROM tasks WHERE id IN ({marks})",
                tuple(chunk),
            ):
                if isinstance(upstream, str):
                    upstream = json.loads(upstream)
                out[tid] = {"status": status, "upstream_ref": ref, "upstream": upstream,
                            "finished_at": finished_at, "attempts": attempts}
        return out

    def outcome(self) -> dict[str, Any]:
        by_error = self._query("SELECT status, coalesce(error_code, ''), count(*) FROM tasks "
                               "GROUP BY status, coalesce(error_code, '')")
        attempts, retried, most = self._query(
            "SELECT coalesce(sum(attempts), 0), coalesce(sum(CASE WHEN attempts > 0 THEN 1 ELSE 0 END), 0), "
            "coalesce(max(attempts), 0) FROM tasks")[0]
        assets, asset_bytes = self._query("SELECT count(*), coalesce(sum(size), 0) FROM assets")[0]
        return {
            "by_status_and_error": {f"{s}/{e}" if e else s: n for s, e, n in by_error},
            "tasks_retried": int(retried),
            "attempts_total": int(attempts),
            "attempts_max": int(most),
            "assets": int(assets),
            "asset_mb": round(int(asset_bytes) / 2**20, 1),
        }

    def close(self) -> None:
        if self._sqlite is not None:
            self._sqlite.close()
        if self._engine is not None:
            self._engine.dispose()


# -- small helpers -------------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


def dist(values: list[float], digits: int = 3) -> dict[str, Any]:
    if not values:
        return {"n": 0}
    r = lambda v: round(v, digits)  # noqa: E731
    return {"n": len(values), "mean": r(sum(values) / len(values)), "p50": r(pct(values, 50)),
            "p90": r(pct(values, 90)), "p99": r(pct(values, 99)), "max": r(max(values)), "min": r(min(values))}


def epoch(iso: str | None) -> float | None:
    if not iso:
        return None
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def host_cpu() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine, all cores, from /proc/stat."""
    fields = [float(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def loopback(url: str) -> str:
    if not url.startswith("http://127.0.0.1:"):
        raise SystemExit(f"refusing to send traffic to {url}: this bench talks to 127.0.0.1 only")
    return url


def upstream_seconds(time_scale: float) -> dict[str, float]:
    """Nominal queue and run time of one veo-3.1 8 s clip in the simulator at ``time_scale``."""
    try:
        from tidehub.sim import params
        from tidehub.sim.behaviour import SimBehaviour
        from tidehub.sim.models import load_models
        from tidehub.sim.settings import BUILTIN_CATALOG_DIR

        model = next(m for m in load_models([BUILTIN_CATALOG_DIR]).values() if m.fal_id == "fal-ai/veo3.1")
        factor = params.work_factor(model, params.with_defaults(model, {"prompt": PROMPT, "duration": DURATION}))
        jitter = SimBehaviour().jitter
    except Exception:  # the catalog moved: the figure is only printed
        return {}
    queue, run = model.queue_s * time_scale, model.run_s * factor * time_scale
    return {"queue_s": round(queue, 1), "run_s": round(run, 1), "total_s": round(queue + run, 1),
            "min_s": round((queue + run) * (1 - jitter), 1), "max_s": round((queue + run) * (1 + jitter), 1)}


def git_state() -> dict[str, Any]:
    """Which gateway code ran: where ``tidehub`` is imported from (the subprocesses inherit the
    environment, so PYTHONPATH can point them at a snapshot) and, in a git checkout, its state."""
    try:
        import tidehub

        root = Path(tidehub.__file__).resolve().parent.parent
    except ImportError:
        root = Path(__file__).resolve().parent.parent
    state: dict[str, Any] = {"tidehub_path": str(root / "tidehub")}
    if not (root / ".git").exists():
        return state
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                              text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "tidehub"], cwd=root, capture_output=True,
                               text=True, timeout=10).stdout.split("\n")
        return {**state, "head": head, "tidehub_uncommitted": [line[3:] for line in dirty if line.strip()]}
    except (OSError, subprocess.SubprocessError):
        return state


def scan_log(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    levels: Counter[str] = Counter()
    samples: list[str] = []
    tracebacks = 0
    with path.open(errors="replace") as fh:
        for line in fh:
            if line.startswith("Traceback"):
                tracebacks += 1
            for level in ("ERROR", "WARNING", "CRITICAL"):
                if f" {level} " in line:
                    levels[level] += 1
                    if len(samples) < 5:
                        samples.append(line.strip()[:300])
    return {"lines_by_level": dict(levels), "tracebacks": tracebacks, "first": samples}


# -- the run -------------------------------------------------------------------------------------


class Run:
    def __init__(self, s: Stack, db: DbReader, args: argparse.Namespace) -> None:
        self.s = s
        self.db = db
        self.args = args
        self.gw = loopback(s.url)
        self.sim = loopback(s.sim_url)
        self.auth = {"Authorization": f"Bearer {s.key}"}
        self.t0 = time.time()
        self.samples: list[dict[str, Any]] = []
        self.submitted: list[str] = []
        self.submit_errors: Counter[str] = Counter()
        self.submit_error_examples: list[str] = []
        self.submit_latency: list[float] = []
        self.submit_started = self.submit_ended = 0.0
        self.submit_aborted = ""
        self.lag: dict[str, dict[str, Any]] = {}
        self.lag_tasks: list[asyncio.Task[None]] = []
        self.refs: dict[str, asyncio.Event] = {}
        self.gateway_polls = 0
        self.sim_polls = 0
        self.lag_notes: Counter[str] = Counter()
        self.stop = asyncio.Event()
        # Shared by the sampled tasks' followers: at most 32 of their requests at once.
        self.lag_connector = aiohttp.TCPConnector(limit=32)
        self.latest_counts: dict[str, int] = {}
        # The simulator stamps "Generating: 10%" at start + run/10: read it once that is likely past.
        up = upstream_seconds(args.time_scale)
        self.first_sim_read_s = (up["queue_s"] + up["run_s"] / 10) * 1.3 if up else 15.0

    # sampling ------------------------------------------------------------------------------------

    async def sampler(self) -> None:
        session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2))
        try:
            last_t, last_gw, last_sim, last_client = time.time(), self.s.cpu_seconds(), cpu_seconds(self.s.sim_pid), time.process_time()
            last_host = host_cpu()
            tick = time.monotonic()
            while not self.stop.is_set():
                tick += 1.0
                try:
                    await asyncio.wait_for(self.stop.wait(), timeout=max(0.0, tick - time.monotonic()))
                except asyncio.TimeoutError:
                    pass
                now = time.time()
                gw_cpu, sim_cpu, client_cpu = self.s.cpu_seconds(), cpu_seconds(self.s.sim_pid), time.process_time()
                host = host_cpu()
                host_busy = 100 * (host[0] - last_host[0]) / max(1.0, host[1] - last_host[1])
                counts = await asyncio.to_thread(self.db.status_counts)
                overdue, oldest = await asyncio.to_thread(self.db.overdue, now)
                sim_requests = None
                try:
                    async with session.get(f"{self.sim}/_sim/stats") as resp:
                        sim_requests = (await resp.json()).get("requests")
                except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
                    pass
                dt = max(1e-6, now - last_t)
                sample = {
                    "t": round(now - self.t0, 2),
                    "rss_mb": round(self.s.rss_mb(), 1),
                    "cpu_pct": round(100 * (gw_cpu - last_gw) / dt, 1),
                    "cpu_s": round(gw_cpu, 2),
                    "sim_cpu_pct": round(100 * (sim_cpu - last_sim) / dt, 1),
                    "sim_cpu_s": round(sim_cpu, 2),
                    "client_cpu_pct": round(100 * (client_cpu - last_client) / dt, 1),
                    # The whole machine (every process, every core): near 100 means the gateway
                    # waited for a CPU, and its own figures understate what it would use.
                    "host_busy_pct": round(host_busy, 1),
                    "submitted": len(self.submitted),
                    "queued": counts.get("queued", 0),
                    "running": counts.get("running", 0),
                    "terminal": sum(counts.get(k, 0) for k in TERMINAL),
                    "overdue": overdue,
                    "oldest_overdue_s": round(oldest, 1),
                    "sim_requests": sim_requests,
                }
                self.samples.append(sample)
                self.latest_counts = counts
                last_t, last_gw, last_sim, last_client, last_host = now, gw_cpu, sim_cpu, client_cpu, host
                print(f"t={sample['t']:6.1f}s rss={sample['rss_mb']:6.1f}MB cpu={sample['cpu_pct']:5.1f}% "
                      f"sim={sample['sim_cpu_pct']:5.1f}% client={sample['client_cpu_pct']:5.1f}% "
                      f"host={host_busy:5.1f}% "
                      f"submitted={sample['submitted']:5d} queued={sample['queued']:5d} running={sample['running']:5d} "
                      f"terminal={sample['terminal']:5d} overdue={overdue:5d} (oldest {oldest:5.1f}s)", flush=True)
        finally:
            await session.close()

    # submitting ----------------------------------------------------------------------------------

    async def submit_all(self, lag_indices: set[int]) -> None:
        body = {"model": MODEL, "input": {"prompt": PROMPT, "duration": DURATION}}
        counter = itertools.count()
        deadline = time.monotonic() + self.args.submit_deadline
        connector = aiohttp.TCPConnector(limit=self.args.concurrency)
        timeout = aiohttp.ClientTimeout(total=60)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout, headers=self.auth) as session:

            async def worker() -> None:
                while time.monotonic() < deadline and not self.submit_aborted:
                    i = next(counter)
                    if i >= self.args.abort_after and not self.submitted:
                        self.submit_aborted = f"the first {self.args.abort_after} submits all failed"
                        return
                    if i >= self.args.tasks:
                        return
                    started = time.perf_counter()
                    try:
                        async with session.post(f"{self.gw}/hub/v1/video", json=body) as resp:
                            raw = await resp.read()
                            data = json.loads(raw) if raw else {}
                            if resp.status == 200 and data.get("task_id"):
                                tid = data["task_id"]
                                self.submitted.append(tid)
                                if i in lag_indices:
                                    self.follow_later(tid)
                            else:
                                self.submit_errors[f"HTTP {resp.status}"] += 1
                                if len(self.submit_error_examples) < 5:
                                    self.submit_error_examples.append(raw[:300].decode(errors="replace"))
                    except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
                        self.submit_errors[type(exc).__name__] += 1
                        if len(self.submit_error_examples) < 5:
                            self.submit_error_examples.append(repr(exc)[:300])
                    self.submit_latency.append(time.perf_counter() - started)

            self.submit_started = time.time()
            await asyncio.gather(*(worker() for _ in range(self.args.concurrency)))
            self.submit_ended = time.time()

    # completion-to-visible latency ---------------------------------------------------------------

    def follow_later(self, tid: str) -> None:
        self.refs[tid] = asyncio.Event()
        self.lag[tid] = {"submitted_at": time.time()}
        self.lag_tasks.append(asyncio.create_task(self.follow(tid)))

    async def watch_refs(self, deadline: float) -> None:
        """Fill in the upstream request of each sampled task from the database, once it has one."""
        while time.monotonic() < deadline and not self.stop.is_set():
            waiting = [tid for tid, ev in self.refs.items() if not ev.is_set()]
            if waiting:
                rows = await asyncio.to_thread(self.db.rows, waiting)
                for tid, row in rows.items():
                    if row["upstream_ref"] or row["status"] in TERMINAL:
                        self.lag[tid]["status_url"] = (row["upstream"] or {}).get("status_url")
                        self.refs[tid].set()
            await asyncio.sleep(1.0)

    async def sim_status(self, session: aiohttp.ClientSession, status_url: str) -> dict[str, Any] | None:
        self.sim_polls += 1
        try:
            async with session.get(loopback(status_url), params={"logs": "1"},
                                   headers={"Authorization": f"Key {SIM_KEY}"}) as resp:
                return await resp.json(content_type=None)
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
            return None

    async def follow(self, tid: str) -> None:
        rec = self.lag[tid]
        deadline = time.monotonic() + self.args.submit_deadline + self.args.deadline
        timeout = aiohttp.ClientTimeout(total=10)
        try:
            await asyncio.wait_for(self.refs[tid].wait(), timeout=max(1.0, deadline - time.monotonic()))
        except asyncio.TimeoutError:
            self.lag_notes["never submitted upstream"] += 1
            return
        status_url = rec.get("status_url")
        async with aiohttp.ClientSession(timeout=timeout, connector=self.lag_connector, connector_owner=False) as session:
            # 1. The planned finish: "Starting" and "Generating: N%" are stamped with the planned times.
            planned_end = None
            if status_url:
                await asyncio.sleep(self.first_sim_read_s)  # past the first progress step, most of the time
                while time.monotonic() < deadline:
                    body = await self.sim_status(session, status_url)
                    planned_end, done = planned_finish(body)
                    if planned_end is not None or done:
                        break
                    await asyncio.sleep(5)
            rec["planned_end"] = planned_end
            if planned_end is not None:
                await asyncio.sleep(max(0.0, planned_end - 1.0 - time.time()))
            else:
                self.lag_notes["no planned finish from the simulator"] += 1
            # 2. Poll the gateway every 0.5 s until the task is terminal.
            while time.monotonic() < deadline:
                self.gateway_polls += 1
                try:
                    async with session.get(f"{self.gw}/hub/v1/tasks/{tid}", headers=self.auth) as resp:
                        task = await resp.json(content_type=None)
                    seen = time.time()
                    if task.get("ready"):
                        rec.update(first_seen=seen, status=task.get("status"),
                                   completed_at_api=epoch(task.get("completed_at")))
                        break
                except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
                    self.lag_notes["gateway poll error"] += 1
                await asyncio.sleep(GATEWAY_POLL_S)
            else:
                self.lag_notes["not terminal by the deadline"] += 1
                return
            # 3. The simulator's real finish, from its last log line.
            if status_url:
                body = await self.sim_status(session, status_url)
                rec["upstream_finished"] = upstream_finish(body)

    def lag_summary(self, rows: dict[str, dict[str, Any]]) -> dict[str, Any]:
        gateway_lag, visible_lag, output_delay, visible_after_commit = [], [], [], []
        for tid, rec in self.lag.items():
            row = rows.get(tid) or {}
            done_at = row.get("finished_at") or rec.get("completed_at_api")
            up = rec.get("upstream_finished")
            if up is None:
                continue
            if done_at is not None:
                gateway_lag.append(done_at - up)
            if rec.get("first_seen") is not None:
                visible_lag.append(rec["first_seen"] - up)
                if done_at is not None:
                    visible_after_commit.append(rec["first_seen"] - done_at)
            if rec.get("planned_end") is not None:
                output_delay.append(up - rec["planned_end"])
        if not gateway_lag:
            return {"skipped": "the simulator gave no completion time for the sampled tasks",
                    "notes": dict(self.lag_notes)}
        return {
            "sampled": len(self.lag),
            "measured": len(gateway_lag),
            "gateway_lag_s": dist(gateway_lag),
            "visible_lag_s": dist(visible_lag),
            "first_seen_minus_finished_at_s": dist(visible_after_commit),
            "sim_finish_minus_planned_s": dist(output_delay),
            "sampled_tasks_retried": sum(1 for tid in self.lag if (rows.get(tid) or {}).get("attempts")),
            "gateway_polls": self.gateway_polls,
            "sim_status_polls": self.sim_polls,
            "notes": dict(self.lag_notes),
        }


def _log_time(entry: dict[str, Any]) -> float | None:
    try:
        return datetime.fromisoformat(entry["timestamp"]).timestamp()
    except (KeyError, TypeError, ValueError):
        return None


def planned_finish(body: dict[str, Any] | None) -> tuple[float | None, bool]:
    """(planned end of the run, whether the request is already over) from a fal status body with logs."""
    if not body:
        return None, False
    if body.get("status") == "COMPLETED":
        return None, True
    logs = body.get("logs") or []
    start = next((_log_time(e) for e in logs if str(e.get("message", "")).startswith("Starting")), None)
    for entry in reversed(logs):
        message = str(entry.get("message", ""))
        if message.startswith("Generating: ") and message.endswith("%") and start is not None:
            share = float(message[len("Generating: "):-1]) / 100
            at = _log_time(entry)
            if at is not None and share > 0:
                return start + (at - start) / share, False
    return None, False


def upstream_finish(body: dict[str, Any] | None) -> float | None:
    """When the simulator's output was ready: the timestamp of its last log line once COMPLETED."""
    if not body or body.get("status") != "COMPLETED":
        return None
    logs = body.get("logs") or []
    return _log_time(logs[-1]) if logs else None


async def drive(s: Stack, db: DbReader, args: argparse.Namespace) -> dict[str, Any]:
    run = Run(s, db, args)
    rng = random.Random(args.seed)
    lag_indices = set(rng.sample(range(args.tasks), min(args.lag_sample, args.tasks)))
    baseline_rss = s.rss_mb()
    sampler = asyncio.create_task(run.sampler())
    refs = asyncio.create_task(run.watch_refs(time.monotonic() + args.submit_deadline + args.deadline))
    await asyncio.sleep(1.5)  # a baseline sample or so before the load

    await run.submit_all(lag_indices)
    submit_s = run.submit_ended - run.submit_started
    rate = len(run.submitted) / submit_s if submit_s > 0 else 0.0
    print(f"submitted {len(run.submitted)} tasks in {submit_s:.1f}s: {rate:.0f}/s "
          f"(errors: {dict(run.submit_errors) or 'none'})"
          f"{'; aborted: ' + run.submit_aborted if run.submit_aborted else ''}", flush=True)

    # Until every accepted task is terminal, or the deadline.
    deadline = time.monotonic() + args.deadline
    all_terminal_at = None
    while time.monotonic() < deadline:
        c = run.latest_counts
        if sum(c.get(k, 0) for k in TERMINAL) >= len(run.submitted) and not any(c.get(k, 0) for k in ACTIVE):
            all_terminal_at = time.time()
            break
        await asyncio.sleep(0.5)
    # Let the sampled tasks' last simulator reads finish (bounded: each has its own deadline).
    try:
        await asyncio.wait_for(asyncio.gather(*run.lag_tasks, return_exceptions=True), timeout=60)
    except asyncio.TimeoutError:
        run.lag_notes["follower still running at the end"] += 1
    run.stop.set()
    await asyncio.gather(sampler, refs, return_exceptions=True)
    await run.lag_connector.close()

    final_counts = await asyncio.to_thread(db.status_counts)
    rows = await asyncio.to_thread(db.rows, list(run.lag))
    outcome = await asyncio.to_thread(db.outcome)
    sim_stats = None
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        try:
            async with session.get(f"{run.sim}/_sim/stats") as resp:
                sim_stats = await resp.json()
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
            pass
    hwm = None
    for line in Path(f"/proc/{s.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            hwm = round(int(line.split()[1]) / 1024, 1)

    samples = run.samples

    def mean_cpu(t_from: float, t_to: float, key: str = "cpu_s") -> float | None:
        """Mean CPU (% of one core) between two moments, from the cumulative CPU seconds in the samples."""
        inside = [x for x in samples if t_from <= x["t"] <= t_to]
        if len(inside) < 2 or inside[-1]["t"] <= inside[0]["t"]:
            return None
        return round(100 * (inside[-1][key] - inside[0][key]) / (inside[-1]["t"] - inside[0]["t"]), 1)

    sub_from, sub_to = run.submit_started - run.t0, run.submit_ended - run.t0
    first_done = next((x["t"] for x in samples if x["terminal"] > 0), None)
    end_t = (all_terminal_at - run.t0) if all_terminal_at else (samples[-1]["t"] if samples else 0.0)
    inflight = [x for x in samples if sub_to <= x["t"] <= end_t]
    with_active = [x for x in samples if x["queued"] + x["running"] > 0]
    timeline = [
        {k: x[k] for k in ("t", "rss_mb", "cpu_pct", "sim_cpu_pct", "host_busy_pct", "queued", "running", "terminal",
                           "overdue", "oldest_overdue_s")}
        for x in samples[:: max(1, args.timeline_every)]
    ]
    return {
        "submit": {
            "accepted": len(run.submitted),
            "errors": dict(run.submit_errors),
            "error_examples": run.submit_error_examples,
            "aborted": run.submit_aborted or None,
            "seconds": round(submit_s, 1),
            "rate_per_s": round(rate, 1),
            "latency_ms": {k: round(v * 1000, 1) for k, v in
                           (("p50", pct(run.submit_latency, 50)), ("p99", pct(run.submit_latency, 99)),
                            ("max", max(run.submit_latency, default=0.0))) if v is not None},
        },
        "gateway": {
            "rss_mb_before": round(baseline_rss, 1),
            "rss_mb_peak_sampled": max((x["rss_mb"] for x in samples), default=None),
            "rss_mb_peak_vmhwm": hwm,
            "rss_mb_end": samples[-1]["rss_mb"] if samples else None,
            "cpu_pct_mean_submitting": mean_cpu(sub_from, sub_to),
            "cpu_pct_mean_in_flight_before_first_completion": mean_cpu(sub_to, first_done) if first_done else None,
            "cpu_pct_mean_after_submit_until_all_terminal": mean_cpu(sub_to, end_t),
            "cpu_pct_max_sample": max((x["cpu_pct"] for x in samples), default=None),
            "max_active": max((x["queued"] + x["running"] for x in samples), default=0),
            "max_overdue": max((x["overdue"] for x in samples), default=0),
            "max_oldest_overdue_s": max((x["oldest_overdue_s"] for x in samples), default=0),
            "seconds_with_tasks_active": len(with_active),
        },
        "simulator": {
            "cpu_pct_mean_after_submit_until_all_terminal": mean_cpu(sub_to, end_t, "sim_cpu_s"),
            "stats_end": sim_stats,
        },
        "client": {
            "cpu_pct_mean_after_submit_until_all_terminal":
                round(sum(x["client_cpu_pct"] for x in inflight) / len(inflight), 1) if inflight else None,
        },
        "host": {
            "cores": os.cpu_count(),
            "busy_pct_of_all_cores_mean_after_submit_until_all_terminal":
                round(sum(x["host_busy_pct"] for x in inflight) / len(inflight), 1) if inflight else None,
            "seconds_at_95pct_busy_or_more": sum(1 for x in samples if x["host_busy_pct"] >= 95),
        },
        "first_completion_s_after_submit_start": round(first_done - sub_from, 1) if first_done else None,
        "all_terminal": all_terminal_at is not None,
        "all_terminal_s_after_submit_start": round(all_terminal_at - run.submit_started, 1) if all_terminal_at else None,
        "final_counts": final_counts,
        "outcome": outcome,
        "lag": run.lag_summary(rows),
        "timeline_every_s": args.timeline_every,
        "timeline": timeline,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=10000)
    parser.add_argument("--time-scale", type=float, default=1.5,
                        help="the simulator's time scale; 1.5 keeps a veo-3.1 8 s clip about 90 s upstream")
    parser.add_argument("--concurrency", type=int, default=64, help="submits in flight at once")
    parser.add_argument("--database-url", default="", help="empty: SQLite in the stack's data dir")
    parser.add_argument("--lag-sample", type=int, default=300, help="tasks whose completion-to-visible lag is measured")
    parser.add_argument("--deadline", type=float, default=900, help="seconds after the last submit for all to end")
    parser.add_argument("--submit-deadline", type=float, default=600, help="seconds allowed for submitting")
    parser.add_argument("--timeline-every", type=int, default=5, help="keep every Nth 1 s sample in the JSON")
    parser.add_argument("--seed", type=int, default=1, help="seed of the lag sample")
    parser.add_argument("--abort-after", type=int, default=200,
                        help="give up submitting when this many submits have failed and none succeeded")
    parser.add_argument("--log-dir", type=Path, default=None, help="where the sim and gateway logs go (default: a temp dir, kept)")
    parser.add_argument("--json-out", type=Path, default=None, help="also write the JSON summary here")
    parser.add_argument("--gateway-env", action="append", default=[], metavar="NAME=VALUE",
                        help="extra environment for the gateway, e.g. TIDEHUB_ENGINE_TICK_S=0.05 (repeatable)")
    args = parser.parse_args()
    gateway_env = {}
    for item in args.gateway_env:
        name, sep, value = item.partition("=")
        if not sep or not name:
            parser.error(f"--gateway-env wants NAME=VALUE, not {item!r}")
        gateway_env[name] = value

    log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="tidehub-inflight-logs-"))
    expected = upstream_seconds(args.time_scale)
    print(f"veo-3.1 {DURATION} at sim time scale {args.time_scale}: about {expected.get('total_s', '?')} s upstream "
          f"({expected.get('min_s', '?')}-{expected.get('max_s', '?')} s); logs in {log_dir}", flush=True)
    summary: dict[str, Any] = {
        "bench": "inflight",
        "machine": machine(),
        "command": " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv]),
        "git": git_state(),
        "load_average_before": list(os.getloadavg()),
        "options": {"tasks": args.tasks, "time_scale": args.time_scale, "concurrency": args.concurrency,
                    "database": args.database_url or "sqlite", "lag_sample": args.lag_sample,
                    "model": MODEL, "duration": DURATION, "gateway_env": gateway_env},
        "upstream_seconds_per_task": expected,
    }
    started = time.time()
    with stack(args.time_scale, database_url=args.database_url, env=gateway_env, log_dir=log_dir) as s:
        db = DbReader(s.data_dir, args.database_url)
        try:
            summary.update(asyncio.run(drive(s, db, args)))
        finally:
            db.close()
    summary["wall_s"] = round(time.time() - started, 1)
    summary["load_average_after"] = list(os.getloadavg())
    summary["gateway_log"] = scan_log(log_dir / "gateway.log")
    summary["sim_log"] = scan_log(log_dir / "sim.log")
    summary["log_dir"] = str(log_dir)
    text = json.dumps(summary, indent=2)
    if args.json_out:
        args.json_out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
