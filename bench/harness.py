"""Shared bench plumbing: the simulator and the gateway as separate processes, wrk as the load.

wrk (Debian package `wrk`) is the load generator: written in C, it leaves the CPU to the gateway,
which a Python client on the same two cores would not.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import httpx

SIM_KEY = "sim-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


def rss_mb(pid: int) -> float:
    """Resident memory of a process, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Stack:
    def __init__(self, gateway_url: str, key: str, gateway_pid: int, data_dir: Path, *,
                 sim_url: str = "", sim_pid: int = 0) -> None:
        self.url = gateway_url
        self.key = key
        self.pid = gateway_pid
        self.data_dir = data_dir
        # The simulator (fal upstream): its own URL and process, for benches that look at both sides.
        self.sim_url = sim_url
        self.sim_pid = sim_pid

    def rss_mb(self) -> float:
        return rss_mb(self.pid)

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)


@contextlib.contextmanager
def stack(sim_time_scale: float, *, database_url: str = "", env: dict[str, str] | None = None,
          log_dir: Path | None = None) -> Iterator[Stack]:
    """Simulator + gateway (each its own process) on free ports, with a fresh data dir and key.

    With ``log_dir``, the simulator's and the gateway's output go to ``sim.log`` and ``gateway.log``
    there (kept after the stack stops); otherwise it is discarded.
    """
    tmp = Path(tempfile.mkdtemp(prefix="tidehub-bench-"))
    sim_port, gw_port = free_port(), free_port()
    procs: list[subprocess.Popen] = []
    logs: list[object] = []

    def output(name: str) -> object:
        if log_dir is None:
            return subprocess.DEVNULL
        log_dir.mkdir(parents=True, exist_ok=True)
        fh = open(log_dir / name, "wb")
        logs.append(fh)
        return fh

    try:
        sim_out = output("sim.log")
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "tidehub", "sim", "--port", str(sim_port), "--time-scale", str(sim_time_scale)],
            stdout=sim_out, stderr=subprocess.STDOUT if log_dir else subprocess.DEVNULL))
        wait_http(f"http://127.0.0.1:{sim_port}/")
        gw_env = {
            **os.environ,
            "TIDEHUB_FAL_BASE_URL": f"http://127.0.0.1:{sim_port}",
            "TIDEHUB_FAL_KEY": SIM_KEY,
            "TIDEHUB_DATA_DIR": str(tmp / "data"),
            "TIDEHUB_DATABASE_URL": database_url,
            # Result files come from the simulator: its port is the one private address allowed.
            "TIDEHUB_SSRF_ALLOW": f"127.0.0.1:{sim_port}",
            # "{sim_url}" in a value stands for the simulator's base URL (e.g. its JWKS for callbacks).
            **{k: v.replace("{sim_url}", f"http://127.0.0.1:{sim_port}") for k, v in (env or {}).items()},
        }
        key = subprocess.run([sys.executable, "-m", "tidehub", "keys", "create", "--name", "bench",
                              "--credits", str(10**15)], env=gw_env,
                             capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        gw_out = output("gateway.log")
        gateway = subprocess.Popen([sys.executable, "-m", "tidehub", "serve", "--port", str(gw_port)], env=gw_env,
                                   stdout=gw_out, stderr=subprocess.STDOUT if log_dir else subprocess.DEVNULL)
        procs.append(gateway)
        wait_http(f"http://127.0.0.1:{gw_port}/api/health")
        yield Stack(f"http://127.0.0.1:{gw_port}", key, gateway.pid, tmp / "data",
                    sim_url=f"http://127.0.0.1:{sim_port}", sim_pid=procs[0].pid)
    finally:
        for proc in reversed(procs):
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
        for fh in logs:
            fh.close()  # type: ignore[attr-defined]
        shutil.rmtree(tmp, ignore_errors=True)


def wrk(url: str, script: str, *, connections: int = 64, seconds: int = 10, threads: int = 2) -> dict[str, float]:
    """Run wrk with a Lua script; return requests/s, latency p50/p99 (ms) and non-2xx count."""
    if shutil.which("wrk") is None:
        raise SystemExit("bench needs wrk: apt-get install wrk")
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as fh:
        fh.write(script + _REPORT)
        path = fh.name
    out = subprocess.run(
        ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{seconds}s", "--latency", "-s", path, url],
        capture_output=True, text=True, check=True,
    ).stdout
    os.unlink(path)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    stats = dict(re.findall(r"^(p50|p99) ([\d.]+)$", out, re.M))
    return {
        "rps": rps,
        "p50_ms": float(stats.get("p50", "nan")),
        "p99_ms": float(stats.get("p99", "nan")),
        "non_2xx": int(errors.group(1)) if errors else 0,
    }


_REPORT = """
done = function(summary, latency, requests)
  io.write(string.format("p50 %.3f\\n", latency:percentile(50) / 1000))
  io.write(string.format("p99 %.3f\\n", latency:percentile(99) / 1000))
end
"""


def machine() -> str:
    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                if l.startswith("model name")), "unknown CPU")
    return f"{os.cpu_count()} cores, {cpu}, Python {sys.version.split()[0]}"
