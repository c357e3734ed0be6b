"""Submit throughput and status-read throughput of the task API.

    python bench/tasks.py [--seconds 10] [--connections 64] [--database-url URL]
                          [--engine-off] [--gateway-env TIDEHUB_NAME=VALUE ...]

The gateway runs as `tidehub serve` with its engine on, against `tidehub sim` as the fal upstream,
so the engine's submits, polls and file copies compete with the API for the CPU, as in production.
With --engine-off (TIDEHUB_ENGINE_ENABLED=false) the gateway is API-only: the API's own ceiling.
Each phase also reports the gateway's and the simulator's CPU (% of one core) during the wrk run.

Beside it, in the same run, a bare ceiling: a minimal Starlette app under the same uvicorn that
inserts each submitted row into SQLite (WAL, synchronous=NORMAL, one commit per request: as durable
as Tidehub's) and reads it back by id, with no auth, validation, routing or billing.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import subprocess
import sys
import tempfile

import httpx

from harness import cpu_seconds, free_port, machine, stack, wait_http, wrk

BARE = r'''
import sqlite3, sys, uuid
import orjson, uvicorn
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route

db = sqlite3.connect(sys.argv[2], isolation_level=None, check_same_thread=False)
db.execute("PRAGMA journal_mode=WAL")
db.execute("PRAGMA synchronous=NORMAL")
db.execute("CREATE TABLE tasks (id TEXT PRIMARY KEY, model TEXT, input TEXT, status TEXT)")

def answer(body, status=200):
    return Response(orjson.dumps(body), status, media_type="application/json")

async def submit(request):
    body = orjson.loads(await request.body())
    task_id = "hub-" + uuid.uuid4().hex
    db.execute("INSERT INTO tasks VALUES (?, ?, ?, 'pending')",
               (task_id, body["model"], orjson.dumps(body["input"]).decode()))
    return answer({"task_id": task_id, "status": "pending"})

async def read(request):
    row = db.execute("SELECT id, model, input, status FROM tasks WHERE id = ?",
                     (request.path_params["id"],)).fetchone()
    if row is None:
        return answer({"error_code": "not_found"}, 404)
    return answer({"task_id": row[0], "model": row[1], "input": orjson.loads(row[2]), "status": row[3]})

app = Starlette(routes=[Route("/hub/v1/image", submit, methods=["POST"]), Route("/hub/v1/tasks/{id}", read),
                        Route("/api/health", lambda r: answer({"status": "ok"}))])
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False)
'''

SUBMIT = """
wrk.method = "POST"
wrk.headers["Authorization"] = "Bearer %s"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"model": "nano-banana", "input": {"prompt": "a lighthouse at dawn", "aspect_ratio": "16:9"}}'
"""

READ = """
ids = {%s}
counter = 0
request = function()
  counter = counter + 1
  return wrk.format("GET", "/hub/v1/tasks/" .. ids[(counter %% #ids) + 1],
                    {["Authorization"] = "Bearer %s"})
end
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--database-url", default="")
    parser.add_argument("--engine-off", action="store_true", help="API-only gateway (TIDEHUB_ENGINE_ENABLED=false)")
    parser.add_argument("--gateway-env", action="append", default=[], metavar="NAME=VALUE",
                        help="extra environment for the gateway (repeatable)")
    args = parser.parse_args()
    env = dict(item.split("=", 1) for item in args.gateway_env)
    if args.engine_off:
        env["TIDEHUB_ENGINE_ENABLED"] = "false"
    results = {"machine": machine(), "database": args.database_url or "sqlite", "gateway_env": env,
               "load_average_before": list(os.getloadavg())}

    def measured(s, url: str, script: str) -> dict:
        """wrk, plus the gateway's and the simulator's CPU (% of one core) while it ran."""
        t, gw, sim = time.monotonic(), s.cpu_seconds(), cpu_seconds(s.sim_pid)
        out = wrk(url, script, connections=args.connections, seconds=args.seconds)
        wall = time.monotonic() - t
        out["gateway_cpu_pct"] = round(100 * (s.cpu_seconds() - gw) / wall, 1)
        out["sim_cpu_pct"] = round(100 * (cpu_seconds(s.sim_pid) - sim) / wall, 1)
        return out

    # The bare ceiling first, on its own, with the same scripts.
    with tempfile.TemporaryDirectory(prefix="tidehub-bare-") as tmp:
        port = free_port()
        bare = subprocess.Popen([sys.executable, "-c", BARE, str(port), f"{tmp}/bare.db"])
        try:
            url = f"http://127.0.0.1:{port}"
            wait_http(f"{url}/api/health")
            results["bare_submit"] = wrk(f"{url}/hub/v1/image", SUBMIT % "-", connections=args.connections,
                                         seconds=args.seconds)
            with httpx.Client(base_url=url) as client:
                ids = [client.post("/hub/v1/image", json={"model": "nano-banana", "input": {"prompt": f"p{i}"}})
                       .json()["task_id"] for i in range(1000)]
            quoted = ",".join(f'"{i}"' for i in ids)
            results["bare_status_read"] = wrk(url, READ % (quoted, "-"), connections=args.connections,
                                              seconds=args.seconds)
        finally:
            bare.terminate()
            bare.wait(timeout=15)

    # Images finish in about a second: the engine is busy throughout the run.
    with stack(0.1, database_url=args.database_url, env=env) as s:
        results["submit"] = measured(s, f"{s.url}/hub/v1/image", SUBMIT % s.key)
        with httpx.Client(base_url=s.url, headers={"Authorization": f"Bearer {s.key}"}) as client:
            ids = [client.post("/hub/v1/image", json={"model": "nano-banana", "input": {"prompt": f"p{i}"}}).json()["task_id"]
                   for i in range(1000)]
        quoted = ",".join(f'"{i}"' for i in ids)
        results["status_read"] = measured(s, s.url, READ % (quoted, s.key))
        results["gateway_rss_mb"] = round(s.rss_mb(), 1)
    results["ratio_to_bare"] = {
        "submit": round(results["submit"]["rps"] / results["bare_submit"]["rps"], 2),
        "status_read": round(results["status_read"]["rps"] / results["bare_status_read"]["rps"], 2)}
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
