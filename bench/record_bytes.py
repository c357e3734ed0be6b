"""Bytes on disk per relayed call: what one call's records cost the SQLite database.

    python bench/record_bytes.py [--calls 3000] [--concurrency 8]

Runs `tidehub serve` against `tidehub sim` (the OpenAI upstream), measures the database with
SQLite's dbstat (pages of every table and index), makes ``--calls`` chat completions, waits until
they are written, measures again, and prints the growth per call by table and index.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from harness import machine, stack

BODY = {"model": "gpt-4o-mini", "user": "end-user-42",
        "messages": [{"role": "system", "content": "You answer briefly."},
                     {"role": "user", "content": "What is the tide doing at the harbour mouth this evening?"}]}


def sizes(db: Path) -> dict[str, int]:
    """Bytes of every table and index (whole pages, as the file grows)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return {name: size for name, size in conn.execute("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name")}
    finally:
        conn.close()


def count_calls(db: Path) -> int:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return conn.execute("SELECT count(*) FROM tasks WHERE id LIKE 'relay-%'").fetchone()[0]
    finally:
        conn.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    env = {"TIDEHUB_OPENAI_BASE_URL": "{sim_url}/v1", "TIDEHUB_OPENAI_KEY": "sim-key"}
    with stack(0.01, env=env) as s:
        db = s.data_dir / "tidehub.db"
        with httpx.Client(base_url=s.url, headers={"Authorization": f"Bearer {s.key}"}, timeout=30) as http:
            assert http.post("/v1/chat/completions", json=BODY).status_code == 200  # opens the first credit block
            deadline = time.monotonic() + 30
            while count_calls(db) < 1 and time.monotonic() < deadline:
                time.sleep(0.1)
            before = sizes(db)

            def one(_: int) -> int:
                return http.post("/v1/chat/completions", json=BODY).status_code

            with ThreadPoolExecutor(args.concurrency) as pool:
                codes = list(pool.map(one, range(args.calls)))
        assert codes.count(200) == args.calls, f"{args.calls - codes.count(200)} calls failed"
        deadline = time.monotonic() + 60
        while count_calls(db) < args.calls + 1 and time.monotonic() < deadline:
            time.sleep(0.2)
        after = sizes(db)
    grown = {name: after.get(name, 0) - before.get(name, 0) for name in after}
    per_call = {name: round(size / args.calls, 1) for name, size in sorted(grown.items(), key=lambda kv: -kv[1])
                if size}
    print(json.dumps({"machine": machine(), "calls": args.calls,
                      "bytes_per_call": round(sum(grown.values()) / args.calls, 1),
                      "by_table_or_index": per_call}, indent=2))


if __name__ == "__main__":
    main()
