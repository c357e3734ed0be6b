"""The task API's own cost per request, in process: a status read and a submit through the whole
ASGI app (every middleware, the dialect, auth, the store), with no server, socket or load
generator, so the figures move only with Tidehub's own code. Beside it, with --baseline-src DIR,
the same run of another tree (``git archive <commit> tidehub | tar -x -C DIR``), one after the
other, alternating, so that both see the same machine.

    python bench/asgi.py [--rounds 30] [--reads 20000] [--submits 4000] [--baseline-src DIR]

Figures are microseconds per request, the best of many short rounds (the machine's noise only
ever adds). Submits are sequential, so each waits for its own commit: that figure is latency,
not the throughput of the group commit. The last figure is the other side: 64 clients submitting
at once, and the process's CPU time (event loop and writer thread, user and system) per submit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


async def call(app: Any, method: str, path: str, headers: list[tuple[bytes, bytes]], body: bytes = b"") -> tuple[int, bytes]:
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "", "headers": headers,
             "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000)}
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    out: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        out.append(message)

    await app(scope, receive, send)
    return out[0]["status"], b"".join(m.get("body", b"") for m in out[1:])


async def measure(rounds: int, reads: int, submits: int, clients: int = 64) -> dict[str, float]:
    import orjson

    from tidehub.app import create_app
    from tidehub.config import Settings
    from tidehub.core.auth import create_key

    app = create_app(Settings(data_dir=Path(tempfile.mkdtemp(prefix="tidehub-asgi-")), engine_enabled=False))
    gw = app.state.gateway
    gw.start()
    try:
        key = create_key(gw.store, name="bench", credits=10**12).secret
        headers = [(b"authorization", f"Bearer {key}".encode()), (b"content-type", b"application/json"),
                   (b"host", b"127.0.0.1")]
        body = orjson.dumps({"model": "nano-banana", "input": {"prompt": "a lighthouse at dawn", "aspect_ratio": "16:9"}})
        status, answer = await call(app, "POST", "/hub/v1/image", headers, body)
        assert status == 200, answer
        task_path = f"/hub/v1/tasks/{orjson.loads(answer)['task_id']}"
        results = {}
        for name, method, path, payload, total in (("status_read_us", "GET", task_path, b"", reads),
                                                   ("submit_us", "POST", "/hub/v1/image", body, submits)):
            for _ in range(200):  # warm caches
                await call(app, method, path, headers, payload)
            per_round = max(1, total // rounds)
            best = float("inf")
            for _ in range(rounds):
                started = time.perf_counter()
                for _ in range(per_round):
                    status, answer = await call(app, method, path, headers, payload)
                best = min(best, (time.perf_counter() - started) / per_round)
            assert status == 200, answer
            results[name] = round(best * 1e6, 1)
        # Submits from many clients at once, as a server sees them: the group commit batches them,
        # and the writer thread and the event loop share the GIL. CPU time of the whole process
        # (both threads, user and system) per request, the best of a few rounds.
        async def client(n: int) -> None:
            for _ in range(n):
                status, answer = await call(app, "POST", "/hub/v1/image", headers, body)
                assert status == 200, answer

        per_client = max(1, submits // clients)
        best_cpu = float("inf")
        for _ in range(max(3, rounds // 10)):
            before = resource.getrusage(resource.RUSAGE_SELF)
            await asyncio.gather(*(client(per_client) for _ in range(clients)))
            after = resource.getrusage(resource.RUSAGE_SELF)
            used = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
            best_cpu = min(best_cpu, used / (per_client * clients))
        results[f"submit_{clients}_at_once_cpu_us"] = round(best_cpu * 1e6, 1)
        return results
    finally:
        await gw.close()


def run_tree(src: str | None, args: argparse.Namespace) -> dict[str, float]:
    env = {**os.environ}
    if src:
        env["PYTHONPATH"] = src
    out = subprocess.run([sys.executable, __file__, "--child", "--rounds", str(args.rounds), "--reads", str(args.reads),
                          "--submits", str(args.submits)], env=env, capture_output=True, text=True, check=True,
                         cwd=tempfile.gettempdir())
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--reads", type=int, default=20000)
    parser.add_argument("--submits", type=int, default=4000)
    parser.add_argument("--baseline-src", default="", help="a tree holding tidehub/ to run beside this one")
    parser.add_argument("--repeat", type=int, default=2, help="runs of each tree, alternating")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(asyncio.run(measure(args.rounds, args.reads, args.submits))))
        return
    from harness import machine

    load = list(os.getloadavg())
    here = str(Path(__file__).resolve().parent.parent)
    trees = {"current": here, **({"baseline": args.baseline_src} if args.baseline_src else {})}
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
    for _ in range(args.repeat):
        for name, src in trees.items():
            runs[name].append(run_tree(src, args))
    best = {name: {k: min(r[k] for r in rs) for k in rs[0]} for name, rs in runs.items()}
    report: dict[str, Any] = {"machine": machine(), "load_average_before": load, "runs": runs, "best": best}
    if "baseline" in best:
        report["current_over_baseline"] = {k: round(best["current"][k] / best["baseline"][k], 2) for k in best["current"]}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
