"""The data directory holds webhook secrets, key hashes and every result file: owner-only, however
permissive the process's umask."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Iterator

import pytest

from conftest import wait_task
from tidehub.server import demo_settings
from tidehub.config import Settings

IMAGE = {"model": "nano-banana", "input": {"prompt": "a lighthouse", "num_images": 2}}


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def open_umask() -> Iterator[None]:
    old = os.umask(0o022)  # the usual default, which would make 0755 directories and 0644 files
    yield
    os.umask(old)


def test_database_and_result_files_are_owner_only(make_gateway, tmp_path: Path, open_umask: None) -> None:
    # A data directory left world-readable by an older version, with its database in it.
    data = tmp_path / "data0"  # the directory make_gateway's first gateway uses
    data.mkdir(mode=0o755)
    os.chmod(data, 0o755)
    (data / "tidehub.db").touch()
    os.chmod(data / "tidehub.db", 0o644)

    gateway = make_gateway()
    assert gateway.settings.data_dir == data
    with gateway.client(gateway.new_key()) as c:
        task_id = c.post("/hub/v1/image", json=IMAGE).json()["task_id"]
        assert wait_task(c, f"/hub/v1/tasks/{task_id}", lambda b: b["ready"])["status"] == "completed"

    assert mode(data) == 0o700
    made = [data / name for name in ("tidehub.db", "tidehub.db-wal", "tidehub.db-shm")]
    assert all(p.exists() for p in made), list(data.iterdir())
    assert {p.name: mode(p) for p in made} == {p.name: 0o600 for p in made}
    files = [p for p in (data / "assets").rglob("*") if p.is_file()]
    dirs = [data / "assets", *(p for p in (data / "assets").rglob("*") if p.is_dir())]
    assert len(files) == 2
    assert {str(p): mode(p) for p in files} == {str(p): 0o600 for p in files}
    assert {str(p): mode(p) for p in dirs} == {str(p): 0o700 for p in dirs}


def test_the_demo_allows_only_the_simulators_port(tmp_path: Path) -> None:
    settings = demo_settings(Settings(data_dir=tmp_path / "demo", sim_port=18001))
    assert settings.ssrf_allow == "127.0.0.1:18001"
    assert mode(tmp_path / "demo") == 0o700 and mode(tmp_path / "demo" / "demo-secret-key") == 0o600
    more = demo_settings(Settings(data_dir=tmp_path / "demo", sim_port=18001, ssrf_allow="10.0.0.0/8"))
    assert more.ssrf_allow == "10.0.0.0/8,127.0.0.1:18001"
