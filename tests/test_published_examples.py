"""The video hub's published API examples (curl and Python), against ``tidehub serve --demo`` run as a user would run it.

The curl lines and Python snippets below are copied from the published documentation; only the host
(``https://your-hub.com``), the key (``sk_live_xxx...``), the example job id and the example
redemption code are replaced with live ones. The seed's page flattened two of its multi-line curl
commands into ``\\ -H`` on one line; they are restored to the line breaks they stand for. Every
relay example runs under ``/api/relay/v1`` as printed and again under ``/v1``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Iterator

import pytest

from conftest import wait_for
from demo_gateway import run_demo

SUBMIT = """curl -X POST https://your-hub.com/api/video/submit \\
-H "Authorization: Bearer sk_live_xxxxxx" \\
-H "Content-Type: application/json" \\
-d '{"prompt":"一只猫在草地上奔跑","user_identifier":"u1"}'"""
STATUS = """curl "https://your-hub.com/api/video/status?jobId=job_abc123" \\
-H "Authorization: Bearer sk_live_xxxxxx\""""
MODELS = """curl "https://your-hub.com/api/relay/v1/models" \\
-H "Authorization: Bearer sk_live_xxxxxx\""""
CHAT = """curl -X POST https://your-hub.com/api/relay/v1/chat/completions \\
-H "Authorization: Bearer sk_live_xxxxxx" \\
-H "Content-Type: application/json" \\
-d '{"model":"gpt-4","messages":[{"role":"user","content":"你好"}]}'"""
IMAGES = """curl -X POST https://your-hub.com/api/relay/v1/images/generations \\
-H "Authorization: Bearer sk_live_xxxxxx" \\
-H "Content-Type: application/json" \\
-d '{"model":"dall-e-3","prompt":"a cute cat","n":1}'"""
EMBEDDINGS = """curl -X POST https://your-hub.com/api/relay/v1/embeddings \\
-H "Authorization: Bearer sk_live_xxxxxx" \\
-H "Content-Type: application/json" \\
-d '{"model":"text-embedding-3-small","input":"你好世界"}'"""
QUOTA = """curl "https://your-hub.com/api/user/quota" \\
-H "Authorization: Bearer sk_live_xxxxxx\""""
REDEEM = """curl -X POST https://your-hub.com/api/user/redemption \\
-H "Authorization: Bearer sk_live_xxxxxx" \\
-H "Content-Type: application/json" \\
-d '{"code":"REDEEM-XXXX-XXXX"}'"""
HEALTH = "curl https://your-hub.com/api/health"

PY_STREAM = """
import openai
client = openai.OpenAI(
api_key="sk_live_xxx",
base_url="https://your-hub.com/api/relay/v1"
)
# 流式输出
stream = client.chat.completions.create(
model="gpt-4",
messages=[{"role": "user", "content": "你好"}],
stream=True
)
for chunk in stream:
    content = chunk.choices[0].delta.content or ""
    print(content, end="", flush=True) # 打字机效果
"""
PY_PLAIN = """
import openai
client = openai.OpenAI(
api_key="sk_live_xxxxxxxxxxxx",
base_url="https://your-hub.com/api/relay/v1"
)
response = client.chat.completions.create(
model="gpt-4",
messages=[{"role": "user", "content": "你好"}]
)
print(response.choices[0].message.content)
"""


class Demo:
    def __init__(self, base: str, key: str, data_dir: Path) -> None:
        self.base, self.key, self.data_dir = base, key, data_dir

    def live(self, text: str, prefix: str = "/api/relay/v1", **extra: str) -> str:
        text = text.replace("https://your-hub.com/api/relay/v1", self.base + prefix)
        text = text.replace("https://your-hub.com", self.base)
        for placeholder in ("sk_live_xxxxxxxxxxxx", "sk_live_xxxxxx", "sk_live_xxx"):
            text = text.replace(placeholder, self.key)
        for old, new in extra.items():
            text = text.replace(old, new)
        return text

    def curl(self, command: str, prefix: str = "/api/relay/v1", **extra: str) -> dict[str, Any]:
        done = subprocess.run(["bash", "-c", self.live(command, prefix, **extra) + " --silent --show-error"],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    def python(self, snippet: str, prefix: str) -> str:
        code = textwrap.dedent(self.live(snippet, prefix))
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    for running in run_demo(tmp_path_factory.mktemp("demo")):
        yield Demo(running.url, running.key, running.data_dir)


@pytest.mark.parametrize("prefix", ["/api/relay/v1", "/v1"])
def test_relay_curl_examples(demo: Demo, prefix: str) -> None:
    models = demo.curl(MODELS, prefix)
    assert models["object"] == "list" and {"gpt-4", "dall-e-3", "text-embedding-3-small"} <= {
        m["id"] for m in models["data"]}
    chat = demo.curl(CHAT, prefix)
    assert chat["object"] == "chat.completion" and "你好" in chat["choices"][0]["message"]["content"]
    image = demo.curl(IMAGES, prefix)
    assert image["data"][0]["url"].startswith(demo.base + "/files/")
    embedding = demo.curl(EMBEDDINGS, prefix)
    assert len(embedding["data"][0]["embedding"]) == 1536


@pytest.mark.parametrize("prefix", ["/api/relay/v1", "/v1"])
def test_python_sdk_examples(demo: Demo, prefix: str) -> None:
    streamed = demo.python(PY_STREAM, prefix)
    plain = demo.python(PY_PLAIN, prefix)
    assert "你好" in streamed and streamed.strip() == plain.strip()


def test_video_quota_redemption_and_health_examples(demo: Demo) -> None:
    submitted = demo.curl(SUBMIT)
    assert submitted["success"] is True
    job_id = submitted["data"]["jobId"]

    def done() -> dict[str, Any] | None:
        status = demo.curl(STATUS, job_abc123=job_id)
        assert status["success"] is True
        return status["data"] if status["data"]["status"] in ("succeeded", "failed") else None

    job = wait_for(done, timeout=90, interval=0.5, what="the demo video job")
    assert job["status"] == "succeeded" and job["progress"] == 100 and job["resultUrl"].startswith(demo.base)

    before = demo.curl(QUOTA)["data"]
    assert before["totalQuota"] == before["usedQuota"] + before["remainingQuota"]
    made = subprocess.run([sys.executable, "-m", "tidehub", "codes", "create", "--credits", "5000",
                           "--data-dir", str(demo.data_dir)], capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    code = made.stdout.strip().splitlines()[-1]
    redeemed = demo.curl(REDEEM, **{"REDEEM-XXXX-XXXX": code})
    assert redeemed == {"success": True, "data": {"addedQuota": 5000, "totalQuota": before["totalQuota"] + 5000}}

    assert demo.curl(HEALTH) == {"status": "ok", "checks": {"db": "ok", "redis": "disabled"}}
