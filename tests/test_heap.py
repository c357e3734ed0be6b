"""A serving process's garbage collector: the startup heap frozen once started, collections spaced
out, and both undone at shutdown (tidehub/heap.py)."""

from __future__ import annotations

import gc
from pathlib import Path

from starlette.testclient import TestClient

from tidehub import heap
from tidehub.app import create_app
from tidehub.config import Settings


def _settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path, database_url=f"sqlite:///{tmp_path / 'tidehub.db'}", engine_enabled=False)


def test_a_serving_app_freezes_its_startup_heap_and_thaws_it_at_shutdown(tmp_path: Path) -> None:
    before = gc.get_threshold()
    app = create_app(_settings(tmp_path), settle_heap=True)
    with TestClient(app) as client:
        assert gc.get_freeze_count() > 10_000  # the catalog, schemas, SQLAlchemy's tables...
        assert gc.get_threshold() == heap.THRESHOLDS
        assert client.get("/api/health").status_code == 200
        # Cycles made while serving are still collected.
        cycle: list = []
        cycle.append(cycle)
        del cycle
        assert gc.collect() >= 1
    assert gc.get_freeze_count() == 0
    assert gc.get_threshold() == before


def test_an_app_embedded_in_a_larger_process_leaves_the_collector_alone(tmp_path: Path) -> None:
    before = gc.get_threshold()
    with TestClient(create_app(_settings(tmp_path))):
        assert gc.get_freeze_count() == 0
        assert gc.get_threshold() == before
