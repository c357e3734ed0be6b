"""``tidehub serve --demo`` as a customer runs it, for the client and CLI tests, with a webhook
receiver it may deliver to, and checks of downloaded result files."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import av
import httpx
from PIL import Image

from conftest import free_port, wait_for
from receivers import Receiver

#: One model of every task capability, with a small input (as a customer would send it).
WORK = {
    "image": ("nano-banana", {"prompt": "a lighthouse at dusk", "num_images": 2}),
    "video": ("veo-3.1", {"prompt": "waves on rocks", "duration": "4s", "resolution": "720p"}),
    "audio": ("elevenlabs-music", {"prompt": "calm piano", "music_length_ms": 5000}),
    "transcribe": ("wizper", {"audio_url": "https://example.com/talk.mp3"}),
}


@dataclass
class Demo:
    url: str
    key: str
    data_dir: Path
    receiver: Receiver


def run_demo(data_dir: Path, sim_time_scale: float = 0.02) -> Iterator[Demo]:
    """The demo, its upstream running at ``sim_time_scale`` (0.02: a 45 s video takes about a second)."""
    receiver = Receiver()
    port, sim_port = free_port(), free_port()
    env = {"TIDEHUB_SIM_PORT": str(sim_port), "TIDEHUB_SIM_TIME_SCALE": str(sim_time_scale), "TIDEHUB_TIME_SCALE": "0.05",
           "TIDEHUB_SSRF_ALLOW": httpx.URL(receiver.url).netloc.decode()}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tidehub", "serve", "--demo", "--port", str(port), "--data-dir", str(data_dir)],
        env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        key_file = data_dir / "demo-key"
        wait_for(lambda: proc.poll() is None and key_file.exists() and key_file.read_text().strip(), timeout=120,
                 what="the demo key")
        url = f"http://127.0.0.1:{port}"

        def up() -> bool:
            try:
                return httpx.get(f"{url}/api/health", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(up, timeout=60, what="the demo to answer")
        yield Demo(url, key_file.read_text().strip(), data_dir, receiver)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        receiver.stop()


def check_file(capability: str, path: Path) -> None:
    """A downloaded result file is real media of its capability's kind."""
    assert path.is_file() and path.stat().st_size > 0, path
    if capability == "image":
        with Image.open(path) as image:
            image.load()
            assert image.size[0] > 0
        return
    with av.open(str(path)) as container:
        kinds = {s.type for s in container.streams}
        duration = container.duration / av.time_base if container.duration else 0.0
    assert ("video" if capability == "video" else "audio") in kinds and duration > 0.5, (path, kinds, duration)
