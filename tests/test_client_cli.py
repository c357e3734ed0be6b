"""The customer CLI (`tidehub run`, `models`, `tasks`, `balance`) as a customer runs it, against
``tidehub serve --demo``, and the operator commands still beside it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from demo_gateway import WORK, Demo, check_file, run_demo
from tidehub.client.cli import InputError, build_input, check_input


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    # Slower than the client tests' demo: a long video must still be running when a command
    # started after it (a Python process, on a busy machine) cancels it.
    yield from run_demo(tmp_path_factory.mktemp("demo"), sim_time_scale=0.2)


def tidehub(*args: str, env: dict[str, str] | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tidehub", *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def customer(demo: Demo) -> dict[str, str]:
    return {"TIDEHUB_URL": demo.url, "TIDEHUB_API_KEY": demo.key}


def pairs(input: dict) -> list[str]:
    args: list[str] = []
    for name, value in input.items():
        args += ["-i", f"{name}={value}"]
    return args


@pytest.mark.parametrize("capability", list(WORK))
def test_run_saves_each_capability_s_results_and_prints_their_paths(demo: Demo, capability: str,
                                                                     tmp_path: Path) -> None:
    model, input = WORK[capability]
    done = tidehub("run", model, *pairs(input), "--out", str(tmp_path / "out"), env=customer(demo))
    assert done.returncode == 0, done.stderr
    assert "completed" in done.stderr  # the progress line's last state
    if capability == "transcribe":
        assert json.loads(done.stdout)["text"].strip()  # no file: the transcript itself
        return
    paths = [Path(line) for line in done.stdout.splitlines() if line.strip()]
    assert len(paths) >= (2 if capability == "image" else 1), done.stdout
    for path in paths:
        assert path.parent == tmp_path / "out"
        check_file(capability, path)


def test_run_with_flags_an_input_file_and_json(demo: Demo, tmp_path: Path) -> None:
    spec = tmp_path / "input.json"
    spec.write_text(json.dumps({"prompt": "from a file", "num_images": 1}))
    done = tidehub("run", "nano-banana", "--input-file", str(spec), "-i", "num_images=2", "-i", "sync_mode=false",
                   "--out", str(tmp_path), "--json", "--url", demo.url, "--key", demo.key,
                   env={"TIDEHUB_URL": "http://127.0.0.1:9", "TIDEHUB_API_KEY": "wrong"})  # the flags win
    assert done.returncode == 0, done.stderr
    task = json.loads(done.stdout)
    assert task["status"] == "completed" and len(task["data"]["images"]) == 2  # -i overrode the file
    assert len(task["downloaded"]) == 2
    for path in task["downloaded"]:
        check_file("image", Path(path))


@pytest.mark.parametrize("args, field", [
    (["nano-banana", "-i", "num_images=two"], "input.num_images"),
    (["nano-banana", "-i", "prompt=x", "-i", "num_images=99"], "input.num_images"),
    (["nano-banana", "-i", "num_images=2"], "input.prompt"),
    (["nano-banana", "-i", "prompt=x", "-i", "colour=red"], "input.colour"),
    (["nano-banana", "-i", "prompt=x", "-i", "sync_mode=maybe"], "input.sync_mode"),
    (["kling-v3-pro-image", "-i", "prompt=x", "-i", "start_image_url=https://example.com/a.png",
      "-i", "voice_ids=a,b,c"], "input.voice_ids"),
])
def test_bad_input_is_refused_before_submitting(demo: Demo, args: list[str], field: str) -> None:
    before = tidehub("balance", "--json", env=customer(demo))
    done = tidehub("run", *args, env=customer(demo))
    assert done.returncode == 2 and field in done.stderr and "nothing was submitted" in done.stderr, done.stderr
    after = tidehub("balance", "--json", env=customer(demo))
    assert before.returncode == 0 and before.stdout == after.stdout  # nothing held, nothing spent


def test_inputs_are_typed_by_the_schema() -> None:
    model = {"input_schema": {"type": "object", "additionalProperties": False, "required": ["prompt"], "properties": {
        "prompt": {"type": "string"}, "n": {"type": "integer"}, "scale": {"type": "number"},
        "fast": {"type": "boolean"}, "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 2},
        "sizes": {"type": "array", "items": {"type": "integer"}}, "extra": {"type": "object"}}}}
    data = build_input(model, ["prompt=a=b", "n=2", "scale=1.5", "fast=yes", "tags=a,b", "sizes=1, 2",
                               'extra={"k": [1]}'], None)
    assert data == {"prompt": "a=b", "n": 2, "scale": 1.5, "fast": True, "tags": ["a", "b"], "sizes": [1, 2],
                    "extra": {"k": [1]}}
    check_input(model, data)
    with pytest.raises(InputError) as refused:
        check_input(model, {**data, "tags": ["a", "b", "c"]})
    assert refused.value.field == "input.tags"


def test_models_tasks_and_balance(demo: Demo) -> None:
    env = customer(demo)
    listed = tidehub("models", "--capability", "video", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    models = json.loads(listed.stdout)
    assert models and all(m["capability"] == "video" for m in models)
    table = tidehub("models", env={**env, "COLUMNS": "200"})
    assert "nano-banana" in table.stdout and "veo-3.1" in table.stdout
    shown = tidehub("models", "show", "nano-banana", env={**env, "COLUMNS": "200"})
    assert shown.returncode == 0, shown.stderr
    assert "num_images" in shown.stdout and "example price:" in shown.stdout and "credits" in shown.stdout
    assert tidehub("models", "show", "no-such-model", env=env).returncode == 2

    submitted = subprocess.run(["curl", "-sf", "-X", "POST", f"{demo.url}/hub/v1/video", "-H",
                                f"Authorization: Bearer {demo.key}", "-H", "Content-Type: application/json", "-d",
                                json.dumps({"model": "veo-3.1", "input": {"prompt": "slow", "duration": "8s",
                                                                          "resolution": "1080p"}})],
                               capture_output=True, text=True, timeout=30)
    task_id = json.loads(submitted.stdout)["task_id"]
    shown = tidehub("tasks", "show", task_id, "--json", env=env)
    assert json.loads(shown.stdout)["task_id"] == task_id
    cancelled = tidehub("tasks", "cancel", task_id, env={**env, "COLUMNS": "200"})
    assert cancelled.returncode == 0 and "cancelled" in cancelled.stdout
    waited = tidehub("tasks", "wait", task_id, "--json", env=env)
    assert waited.returncode == 1 and json.loads(waited.stdout)["status"] == "cancelled"
    done = tidehub("run", *WORK["image"][:1], *pairs(WORK["image"][1]), "--json", "--out", "/tmp", env=env)
    done_id = json.loads(done.stdout)["task_id"]
    waited = tidehub("tasks", "wait", done_id, env={**env, "COLUMNS": "200"})
    assert waited.returncode == 0 and "completed" in waited.stdout and "/files/" in waited.stdout
    assert tidehub("tasks", "show", "hub-nope", env=env).returncode == 2

    balance = tidehub("balance", "--json", env=env)
    account = json.loads(balance.stdout)
    assert account["spent"] > 0 and account["balance"] >= 0
    assert "available" in tidehub("balance", env=env).stdout
    assert tidehub("balance", env={"TIDEHUB_URL": demo.url, "TIDEHUB_API_KEY": "sk-th-wrong"}).returncode == 2


def test_operator_commands_still_work_beside_the_customer_ones(demo: Demo) -> None:
    made = tidehub("keys", "create", "--credits", "10", "--data-dir", str(demo.data_dir))
    assert made.returncode == 0, made.stderr
    assert tidehub("keys", "list", "--data-dir", str(demo.data_dir)).returncode == 0
    assert tidehub("admin", "list", "--data-dir", str(demo.data_dir)).returncode == 0
    helped = tidehub("--help")
    for command in ("serve", "sim", "keys", "credits", "codes", "channels", "admin", "run", "models", "tasks",
                    "balance"):
        assert command in helped.stdout
