"""Status reads while the engine copies a large result file, beside a baseline with no copy.

    python bench/loop_block.py [--seconds 10] [--connections 8] [--size-mb 200] [--copiers 2]

One run, two phases on the same gateway (`tidehub serve` against `tidehub sim`, each its own
process): first wrk reads a task's status (`GET /hub/v1/tasks/{id}`) with nothing else going on;
then the same wrk run while ``--copiers`` clients keep submitting image tasks whose result file is
a ``--size-mb`` MB file (the simulator's ``result_url`` knob points every result at it; a plain
`python -m http.server` process serves it), so a copy of it is in progress nearly all the time.
Each copy is checked (its size) and deleted once its task succeeds, to keep the disk free. The report gives p50/p99 of the
status reads in both phases, and the copies done in the second.

To measure another checkout's gateway with the same bench, put it first on PYTHONPATH
(``PYTHONPATH=/path/to/checkout python bench/loop_block.py``): the processes import it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

import tidehub
from harness import SIM_KEY, free_port, machine, stack, wait_http, wrk

READ = """
wrk.headers["Authorization"] = "Bearer %s"
"""

SUBMIT = {"model": "nano-banana", "input": {"prompt": "a lighthouse at dawn"}}
SIZE = [0]  # bytes of the served file


def submit_and_wait(http: httpx.Client, data_dir: Path) -> tuple[str, float]:
    """One task through to success (its result copied), then its copy deleted (the disk stays
    free); returns its id and the seconds it took."""
    started = time.monotonic()
    resp = http.post("/hub/v1/image", json=SUBMIT)
    resp.raise_for_status()
    task_id = resp.json()["task_id"]
    while True:
        task = http.get(f"/hub/v1/tasks/{task_id}").json()
        if task["status"] == "completed":
            took = time.monotonic() - started
            break
        if task["status"] not in ("pending", "processing"):
            raise RuntimeError(f"task {task_id} ended {task['status']}: {task}")
        time.sleep(0.05)
    for token in re.findall(r"/files/([\w-]+)/", json.dumps(task)):
        copy = data_dir / "assets" / token[:2] / token
        if not any(f.stat().st_size == SIZE[0] for f in copy.iterdir()):
            raise RuntimeError(f"the copy of task {task_id} is not {SIZE[0]} bytes")
        shutil.rmtree(copy)
    return task_id, took


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--size-mb", type=int, default=200)
    parser.add_argument("--copiers", type=int, default=2)
    args = parser.parse_args()

    served = Path(tempfile.mkdtemp(prefix="tidehub-bench-file-"))
    with open(served / "result.bin", "wb") as fh:
        block = os.urandom(1024 * 1024)
        for _ in range(args.size_mb):
            fh.write(block)
    SIZE[0] = args.size_mb * 1024 * 1024
    file_port = free_port()
    file_server = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(file_port), "--bind", "127.0.0.1", "--directory", str(served)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    results: dict = {"machine": machine(), "tidehub": str(Path(tidehub.__file__).parent),
                     "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
                     "size_mb": args.size_mb, "connections": args.connections, "seconds": args.seconds,
                     "load_average_before": [round(x, 2) for x in os.getloadavg()]}
    try:
        wait_http(f"http://127.0.0.1:{file_port}/")
        # The gateway runs at the simulator's pace; the file server is a second loopback address
        # it may fetch from (the bench's own, nothing else listens there).
        env = {"TIDEHUB_TIME_SCALE": "0.02", "TIDEHUB_SSRF_ALLOW": "127.0.0.1"}
        with stack(0.02, env=env) as s:
            knobs = {"result_url": f"http://127.0.0.1:{file_port}/result.bin",
                     "result_content_type": "image/png"}
            httpx.put(f"{s.sim_url}/_sim/channels/{SIM_KEY}", json=knobs, timeout=10).raise_for_status()
            with httpx.Client(base_url=s.url, headers={"Authorization": f"Bearer {s.key}"}, timeout=120) as http:
                task_id, first = submit_and_wait(http, s.data_dir)
            results["one_copy_s"] = round(first, 2)
            url = f"{s.url}/hub/v1/tasks/{task_id}"
            results["baseline"] = wrk(url, READ % s.key, connections=args.connections, seconds=args.seconds)

            stop = threading.Event()
            done: list[float] = []

            def copier() -> None:
                with httpx.Client(base_url=s.url, headers={"Authorization": f"Bearer {s.key}"},
                                  timeout=120) as http:
                    while not stop.is_set():
                        done.append(submit_and_wait(http, s.data_dir)[1])

            threads = [threading.Thread(target=copier, daemon=True) for _ in range(args.copiers)]
            for t in threads:
                t.start()
            time.sleep(1.0)  # the first copies are under way
            results["while_copying"] = wrk(url, READ % s.key, connections=args.connections, seconds=args.seconds)
            stop.set()
            for t in threads:
                t.join(timeout=120)
            results["copies_done"] = len(done)
            results["copy_s_mean"] = round(sum(done) / len(done), 2) if done else None
    finally:
        file_server.terminate()
        file_server.wait(timeout=10)
        shutil.rmtree(served, ignore_errors=True)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
