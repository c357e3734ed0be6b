"""The OpenAI-compatible relay's overhead, side by side in one run.

Three ways to reach the same fast mock upstream (an aiohttp server on loopback answering chat
completions at once, plain or as a 20-chunk SSE stream):

- direct: wrk talks to the upstream itself;
- bare proxy: a few lines of aiohttp that forward the request and stream the answer back (no auth,
  no accounting): the practical ceiling for a Python relay;
- Tidehub: ``tidehub serve`` with the upstream as its OpenAI channel: key lookup, routing,
  validation, the credit hold and its settlement, the usage record.

Reported: requests/s at 32 connections (``--rounds R``: R loaded runs per target, alternating
between the targets, and the median), the same requests per second of the target's own CPU
(its process's user + system time over the loaded run: steadier than rps on a shared machine) and
that figure as a share of the bare proxy's, and latency p50/p99 of sequential requests (one
connection), with the latency each relay adds over direct.

    python bench/relay.py [--seconds 10] [--rounds 1] [--connections 32] [--database-url URL]
                          [--without-metrics] [--baseline-src DIR]

``--baseline-src DIR`` adds a Tidehub run from another source tree (``DIR/tidehub``, say
``git archive main tidehub | tar -x -C DIR``) on the same data, to compare two versions in one run.

``--without-metrics`` adds a fourth target: a second Tidehub on the same data with its HTTP
metrics off (``TIDEHUB_HTTP_METRICS=false``), to price the metrics middleware in the same run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from statistics import median
from typing import Iterator

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import cpu_seconds, free_port, machine, wait_http, wrk  # noqa: E402

MOCK_UPSTREAM = r'''
import json, sys, time
from aiohttp import web

CHUNKS = 20
HEAD = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini"}
USAGE = {"prompt_tokens": 12, "completion_tokens": CHUNKS, "total_tokens": 12 + CHUNKS}
PLAIN = json.dumps({"id": "chatcmpl-bench", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": "tide " * CHUNKS},
                                 "finish_reason": "stop"}], "usage": USAGE}).encode()

def frame(choices, usage="absent"):
    chunk = dict(HEAD, choices=choices)
    if usage != "absent":
        chunk["usage"] = usage
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"

async def chat(request):
    body = await request.json()
    if not body.get("stream"):
        return web.Response(body=PLAIN, content_type="application/json")
    with_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    u = None if with_usage else "absent"
    events = [frame([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}], u)]
    events += [frame([{"index": 0, "delta": {"content": "tide "}, "finish_reason": None}], u) for _ in range(CHUNKS)]
    events.append(frame([{"index": 0, "delta": {}, "finish_reason": "stop"}], u))
    if with_usage:
        events.append(frame([], USAGE))
    events.append(b"data: [DONE]\n\n")
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    for event in events:
        await resp.write(event)
    await resp.write_eof()
    return resp

app = web.Application()
app.router.add_post("/v1/chat/completions", chat)
app.router.add_get("/v1/models", lambda r: web.json_response({"object": "list", "data": []}))
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
'''

BARE_PROXY = r'''
import sys
import aiohttp
from aiohttp import web

UPSTREAM = sys.argv[2]

async def start(app):
    app["http"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=200))

async def proxy(request):
    body = await request.read()
    async with request.app["http"].post(UPSTREAM + "/v1/chat/completions", data=body,
                                        headers={"Content-Type": "application/json"}) as up:
        resp = web.StreamResponse(status=up.status, headers={"Content-Type": up.headers["Content-Type"]})
        await resp.prepare(request)
        async for chunk in up.content.iter_any():
            await resp.write(chunk)
        await resp.write_eof()
        return resp

app = web.Application()
app.on_startup.append(start)
app.router.add_post("/v1/chat/completions", proxy)
app.router.add_get("/v1/models", lambda r: web.json_response({"object": "list", "data": []}))
# "--reuse-port": several copies share the port (SO_REUSEPORT), as bench/workers.py runs it.
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None,
            reuse_port="--reuse-port" in sys.argv)
'''


def lua(body: dict, key: str) -> str:
    payload = json.dumps(json.dumps(body))  # a Lua string literal of the JSON text
    return f"""
wrk.method = "POST"
wrk.body = {payload}
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {key}"
"""


@contextlib.contextmanager
def process(args: list[str], env: dict[str, str] | None = None, cwd: str | None = None) -> Iterator[subprocess.Popen]:
    proc = subprocess.Popen(args, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, cwd=cwd)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--database-url", default="")
    parser.add_argument("--without-metrics", action="store_true",
                        help="also measure a Tidehub with its HTTP metrics off")
    parser.add_argument("--rounds", type=int, default=1,
                        help="loaded runs of --seconds each, alternating between the targets; the medians "
                             "are reported (steadier than one long run on a busy machine)")
    parser.add_argument("--baseline-src", default="",
                        help="also measure a Tidehub run from this source tree (holding tidehub/), on the same data")
    args = parser.parse_args()

    up_port, proxy_port, gw_port, bare_gw_port, base_port = (free_port() for _ in range(5))
    upstream = f"http://127.0.0.1:{up_port}"
    with tempfile.TemporaryDirectory(prefix="tidehub-relay-bench-") as tmp, \
            process([sys.executable, "-c", MOCK_UPSTREAM, str(up_port)]) as mock, \
            process([sys.executable, "-c", BARE_PROXY, str(proxy_port), upstream]) as bare:
        env = {"TIDEHUB_DATA_DIR": tmp, "TIDEHUB_DATABASE_URL": args.database_url,
               "TIDEHUB_OPENAI_BASE_URL": f"{upstream}/v1", "TIDEHUB_OPENAI_KEY": "bench-upstream-key",
               "TIDEHUB_FAL_KEY": ""}
        key = subprocess.run([sys.executable, "-m", "tidehub", "keys", "create", "--name", "bench",
                              "--credits", str(10**15)], env={**os.environ, **env},
                             capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        unmetered = ([sys.executable, "-m", "tidehub", "serve", "--port", str(bare_gw_port)]
                     if args.without_metrics else [sys.executable, "-c", "import time; time.sleep(10**6)"])
        idle = [sys.executable, "-c", "import time; time.sleep(10**6)"]
        base_src = str(Path(args.baseline_src).resolve()) if args.baseline_src else None
        # Run from the other tree (``-m`` puts the working directory first on the path).
        baseline = [sys.executable, "-m", "tidehub", "serve", "--port", str(base_port)] if base_src else idle
        with process([sys.executable, "-m", "tidehub", "serve", "--port", str(gw_port)], env) as gateway, \
                process(unmetered, {**env, "TIDEHUB_HTTP_METRICS": "false"}) as unmetered_gw, \
                process(baseline, {**env, "PYTHONPATH": base_src or ""}, cwd=base_src) as base_gw:
            for url in (upstream, f"http://127.0.0.1:{proxy_port}"):
                wait_http(f"{url}/v1/models")
            wait_http(f"http://127.0.0.1:{gw_port}/api/health")
            targets = {"direct": upstream, "bare proxy": f"http://127.0.0.1:{proxy_port}",
                       "tidehub": f"http://127.0.0.1:{gw_port}"}
            pids = {"direct": mock.pid, "bare proxy": bare.pid, "tidehub": gateway.pid}
            if args.without_metrics:
                wait_http(f"http://127.0.0.1:{bare_gw_port}/api/health")
                targets["no metrics"] = f"http://127.0.0.1:{bare_gw_port}"
                pids["no metrics"] = unmetered_gw.pid
            if base_src:
                wait_http(f"http://127.0.0.1:{base_port}/api/health")
                targets["baseline"] = f"http://127.0.0.1:{base_port}"
                pids["baseline"] = base_gw.pid
            body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello."}]}
            print(f"machine: {machine()}; load average {os.getloadavg()[0]:.2f}")
            print(f"{'':8} {'target':11} {'rps@' + str(args.connections):>9} {'req/cpu-s':>9} {'÷ bare':>6} "
                  f"{'seq p50':>8} {'seq p99':>8} {'+p50':>7} {'+p99':>7} {'errors':>6}")
            for mode, request in (("plain", body), ("stream", {**body, "stream": True})):
                script = lua(request, key)
                for name, url in targets.items():
                    wrk(f"{url}/v1/chat/completions", script, connections=args.connections, seconds=2)  # warm up
                # Loaded rounds alternate between the targets, so a slow spell of the shared machine
                # falls on all of them; each target's figure is its median round, and its share of
                # the bare proxy the median of the per-round shares.
                rounds: dict[str, list[dict]] = {name: [] for name in targets}
                for _ in range(args.rounds):
                    for name, url in targets.items():
                        cpu0 = cpu_seconds(pids[name])
                        load = wrk(f"{url}/v1/chat/completions", script, connections=args.connections,
                                   seconds=args.seconds)
                        load["per_cpu_s"] = load["rps"] * args.seconds / max(cpu_seconds(pids[name]) - cpu0, 0.01)
                        rounds[name].append(load)
                seqs = {name: wrk(f"{url}/v1/chat/completions", script, connections=1, threads=1,
                                  seconds=args.seconds) for name, url in targets.items()}
                base = seqs["direct"]
                for name in targets:
                    loads = rounds[name]
                    shares = [load["per_cpu_s"] / bare["per_cpu_s"] for load, bare in zip(loads, rounds["bare proxy"])]
                    seq = seqs[name]
                    added50 = seq["p50_ms"] - base["p50_ms"]
                    added99 = seq["p99_ms"] - base["p99_ms"]
                    print(f"{mode:8} {name:11} {median(l['rps'] for l in loads):9.0f} "
                          f"{median(l['per_cpu_s'] for l in loads):9.0f} {median(shares):6.2f} "
                          f"{seq['p50_ms']:7.2f}ms {seq['p99_ms']:7.2f}ms {added50:6.2f}ms {added99:6.2f}ms "
                          f"{sum(l['non_2xx'] for l in loads) + seq['non_2xx']:6d}", flush=True)
                if "no metrics" in rounds:
                    ratio = median(a["rps"] / b["rps"] for a, b in zip(rounds["tidehub"], rounds["no metrics"]))
                    print(f"{mode:8} rps with HTTP metrics / without, median of {args.rounds} alternating rounds: "
                          f"{ratio:.3f}", flush=True)

if __name__ == "__main__":
    main()
