"""Submit throughput and status-read throughput of the task API.

    python bench/tasks.py [--seconds 10] [--connections 64] [--database-url URL]

The gateway runs as `tidehub serve` with its engine on, against `tidehub sim` as the fal upstream,
so the engine's submits, polls and file copies compete with the API for the CPU, as in production.
"""

from __future__ import annotations

import argparse
import json

import httpx

from harness import machine, stack, wrk

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
    args = parser.parse_args()
    results = {"machine": machine(), "database": args.database_url or "sqlite"}
    # Images finish in about a second: the engine is busy throughout the run.
    with stack(0.1, database_url=args.database_url) as s:
        results["submit"] = wrk(f"{s.url}/hub/v1/image", SUBMIT % s.key, connections=args.connections,
                                seconds=args.seconds)
        with httpx.Client(base_url=s.url, headers={"Authorization": f"Bearer {s.key}"}) as client:
            ids = [client.post("/hub/v1/image", json={"model": "nano-banana", "input": {"prompt": f"p{i}"}}).json()["task_id"]
                   for i in range(1000)]
        quoted = ",".join(f'"{i}"' for i in ids)
        results["status_read"] = wrk(s.url, READ % (quoted, s.key), connections=args.connections,
                                     seconds=args.seconds)
        results["gateway_rss_mb"] = round(s.rss_mb(), 1)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
