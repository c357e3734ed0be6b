"""Every body the OpenAI-compatible relay answers, checked against OpenAI's own published schema for
that answer (the components vendored in tests/openai_spec/ from openai/openai-openapi). The
gateway runs on the simulator, whose OpenAI API is the upstream; plain HTTPX shows the wire as is."""

from __future__ import annotations

import io
from typing import Any

import httpx
import orjson
import pytest
from PIL import Image

from conftest import GatewayServer, wait_for
from mediacheck import wav
from openai_spec import check, problems
from tidehub.sim import CONTENT_POLICY_MARKER, STREAM_CUT_MARKER

HI = [{"role": "user", "content": "hi"}]


def ok(resp: httpx.Response, component: str) -> dict[str, Any]:
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("application/json"), resp.headers["content-type"]
    return check(resp.json(), component)


def sse_chunks(http: httpx.Client, body: dict[str, Any]) -> list[dict[str, Any]]:
    """The JSON events of a streamed chat (``[DONE]`` checked and left out)."""
    with http.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as resp:
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in resp.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines), lines[:3]
    assert lines[-1] == "data: [DONE]"
    return [orjson.loads(line.removeprefix("data: ")) for line in lines[:-1]]


def png(width: int = 600, height: int = 400) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (20, 120, 200)).save(out, format="PNG")
    return out.getvalue()


def test_the_checker_names_what_is_wrong() -> None:
    """The check itself: a body missing fields or with wrong types fails, naming each field."""
    found = problems({"id": "v", "object": "video", "model": "sora-2", "status": "cancelled", "progress": 0,
                      "created_at": 1.5, "completed_at": None, "size": "1280x720", "error": {"code": "x"}},
                     "VideoResource")
    assert "$: 'expires_at' is a required property" in found
    assert "$.created_at: 1.5 is not of type 'integer'" in found
    assert "$.error: 'message' is a required property" in found
    assert any(p.startswith("$.status: 'cancelled' is not one of") for p in found)
    # OpenAPI 3.0's nullable (still used in the stream chunk) is honoured, and only for null.
    chunk = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
             "choices": [{"index": 0, "delta": {"content": "x"}, "logprobs": None, "finish_reason": None}]}
    assert problems(chunk, "CreateChatCompletionStreamResponse") == []
    chunk["choices"][0]["finish_reason"] = "done"
    assert problems(chunk, "CreateChatCompletionStreamResponse") != []
    with pytest.raises(AssertionError, match=r"\$\.error: 'param' is a required property"):
        check({"error": {"message": "m", "type": "t", "code": None}}, "ErrorResponse")


@pytest.mark.parametrize("prefix", ["/v1", "/api/relay/v1"])
def test_models(gateway: GatewayServer, prefix: str) -> None:
    with gateway.client(gateway.new_key()) as http:
        listed = ok(http.get(f"{prefix}/models"), "ListModelsResponse")
        assert {"gpt-4o", "whisper-1", "sora-2"} <= {m["id"] for m in listed["data"]}
        assert ok(http.get(f"{prefix}/models/gpt-4o"), "Model")["id"] == "gpt-4o"


def test_chat_plain_and_every_stream_chunk(client: httpx.Client) -> None:
    plain = ok(client.post("/v1/chat/completions", json={"model": "gpt-4o", "messages": HI, "n": 2}),
               "CreateChatCompletionResponse")
    assert len(plain["choices"]) == 2
    for options in (None, {"include_usage": True}):
        body: dict[str, Any] = {"model": "gpt-4o-mini", "messages": HI, "n": 2}
        if options:
            body["stream_options"] = options
        chunks = sse_chunks(client, body)
        assert len(chunks) > 3
        for chunk in chunks:
            check(chunk, "CreateChatCompletionStreamResponse")
        assert (chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] > 0) == bool(options)


def test_embeddings_and_images(client: httpx.Client) -> None:
    ok(client.post("/v1/embeddings", json={"model": "text-embedding-3-small", "input": ["a", "b"]}),
       "CreateEmbeddingResponse")
    packed = client.post("/v1/embeddings", json={"model": "text-embedding-3-large", "input": "a", "dimensions": 8,
                                                 "encoding_format": "base64"}).json()
    # The spec types `embedding` as a float array only, yet OpenAI sends base64 as a string (the
    # official SDK asks for it by default): the rest of that body is checked.
    assert isinstance(packed["data"][0]["embedding"], str)
    check({**packed, "data": [{**item, "embedding": []} for item in packed["data"]]}, "CreateEmbeddingResponse")
    url = ok(client.post("/v1/images/generations", json={"model": "dall-e-3", "prompt": "a cat"}), "ImagesResponse")
    assert url["data"][0]["url"].startswith(str(client.base_url))
    b64 = ok(client.post("/v1/images/generations", json={"model": "gpt-image-1", "prompt": "a boat", "n": 2,
                                                         "quality": "low"}), "ImagesResponse")
    assert len(b64["data"]) == 2 and b64["usage"]["output_tokens"] > 0
    edited = ok(client.post("/v1/images/edits", data={"model": "gpt-image-1", "prompt": "add a boat", "size": "auto"},
                            files=[("image", ("source.png", png(), "image/png"))]), "ImagesResponse")
    assert edited["data"][0]["b64_json"] and edited["size"] == "1536x1024"


@pytest.mark.parametrize("path", ["/v1/audio/transcriptions", "/v1/audio/translations"])
def test_transcripts_in_json_and_verbose_json(client: httpx.Client, path: str) -> None:
    noun = "Transcription" if path.endswith("transcriptions") else "Translation"
    audio = [("file", ("speech.wav", wav(6), "audio/wav"))]
    plain = ok(client.post(path, data={"model": "whisper-1"}, files=audio), f"Create{noun}ResponseJson")
    asked = ok(client.post(path, data={"model": "whisper-1", "response_format": "json"}, files=audio),
               f"Create{noun}ResponseJson")
    assert plain["text"] and asked["text"] == plain["text"]
    fields: dict[str, Any] = {"model": "whisper-1", "response_format": "verbose_json"}
    if noun == "Transcription":
        fields["timestamp_granularities[]"] = ["word", "segment"]
    verbose = ok(client.post(path, data=fields, files=audio), f"Create{noun}ResponseVerboseJson")
    assert verbose["text"] == plain["text"] and verbose["segments"]
    assert verbose["duration"] == pytest.approx(6, abs=0.1)


def test_videos_queued_completed_cancelled_and_failed(gateway: GatewayServer) -> None:
    key = gateway.new_key()
    with gateway.client(key) as http:
        created = ok(http.post("/v1/videos", json={"model": "sora-2", "prompt": "waves on a pier", "seconds": "4",
                                                   "size": "1280x720"}), "VideoResource")
        assert created["status"] == "queued" and created["error"] is None and created["expires_at"] is None
        assert (created["prompt"], created["seconds"], created["size"]) == ("waves on a pier", "4", "1280x720")
        # Defaults are shown as OpenAI fills them in; a multipart create is the same object.
        defaults = ok(http.post("/v1/videos", files={"prompt": (None, "gulls"), "model": (None, "sora-2")}),
                      "VideoResource")
        assert (defaults["seconds"], defaults["size"]) == ("4", "720x1280")
        doomed = ok(http.post("/v1/videos", json={"prompt": f"a storm {CONTENT_POLICY_MARKER}"}), "VideoResource")
        dropped = ok(http.post("/v1/videos", json={"model": "sora-2-pro", "prompt": "a long harbour tour",
                                                   "seconds": "12"}), "VideoResource")

        deleted = ok(http.delete(f"/v1/videos/{dropped['id']}"), "DeletedVideoResource")
        assert deleted == {"id": dropped["id"], "object": "video.deleted", "deleted": True}
        cancelled = ok(http.get(f"/v1/videos/{dropped['id']}"), "VideoResource")
        assert cancelled["status"] == "failed" and cancelled["error"]["code"] == "cancelled"
        assert cancelled["completed_at"] is not None and cancelled["expires_at"] is None

        def finished(video_id: str) -> dict[str, Any] | None:
            body = ok(http.get(f"/v1/videos/{video_id}"), "VideoResource")
            return body if body["status"] in ("completed", "failed") else None

        done = wait_for(lambda: finished(created["id"]), timeout=60, what="the video")
        assert done["status"] == "completed" and done["progress"] == 100 and done["error"] is None
        task = gateway.gateway.store.tasks.get(done["id"])
        assert done["completed_at"] == int(task["finished_at"])
        retention = gateway.settings.asset_retention_days * 86400
        assert done["expires_at"] == int(task["finished_at"] + retention)
        # That is when the copied file stops being served (to the second).
        (asset,) = gateway.gateway.store.assets.of_task(done["id"])
        assert abs(asset["expires_at"] - done["expires_at"]) < 2
        failed = wait_for(lambda: finished(doomed["id"]), timeout=60, what="the refused video")
        assert failed["status"] == "failed" and failed["error"]["message"] and failed["expires_at"] is None
        assert failed["error"]["code"] != "cancelled"


def test_error_bodies(gateway: GatewayServer) -> None:
    key = gateway.new_key()
    poor = gateway.new_key(credits=2)
    limited = gateway.new_key(allowed_models=["gpt-4o"])
    chat = "/v1/chat/completions"
    cases: list[tuple[str | None, str, str, dict[str, Any], int, str | None]] = [
        # (key, method, path, request, status, code)
        (None, "GET", "/v1/models", {}, 401, "invalid_api_key"),
        ("sk-th-wrong", "POST", chat, {"json": {"model": "gpt-4", "messages": HI}}, 401, "invalid_api_key"),
        (key, "POST", chat, {"json": {"model": "gpt-4x", "messages": HI}}, 404, "model_not_found"),
        (key, "GET", "/v1/models/gpt-4x", {}, 404, "model_not_found"),
        (key, "POST", chat, {"json": {"model": "gpt-4", "messages": HI, "temperature": 5}}, 400, None),
        (key, "POST", chat, {"json": {"model": "gpt-4", "messages": []}}, 400, None),
        (key, "POST", chat, {"json": {"model": "gpt-4", "messages": HI, "stream": "yes"}}, 400, None),
        (key, "POST", chat, {"content": b"{not json", "headers": {"Content-Type": "application/json"}}, 400, None),
        (key, "POST", "/v1/audio/transcriptions", {"data": {"model": "whisper-1"},
                                                   "files": {"other": ("a.txt", b"x", "text/plain")}}, 400, None),
        (key, "POST", "/v1/audio/transcriptions", {"json": {"model": "whisper-1"}}, 415, None),
        (key, "POST", "/v1/videos", {"json": {"model": "sora-2", "prompt": "x", "seconds": "5"}}, 400, None),
        (key, "GET", "/v1/videos/video-nope", {}, 404, None),
        (key, "GET", "/v1/nothing-here", {}, 404, None),
        (key, "GET", chat, {}, 405, None),
        (poor, "POST", chat, {"json": {"model": "gpt-4", "messages": HI}}, 403, "insufficient_credits"),
        (poor, "POST", "/v1/videos", {"json": {"prompt": "waves"}}, 403, "insufficient_credits"),
        (limited, "POST", chat, {"json": {"model": "gpt-4", "messages": HI}}, 403, "model_not_allowed"),
    ]
    for who, method, path, request, status, code in cases:
        headers = {**request.pop("headers", {}), **({"Authorization": f"Bearer {who}"} if who else {})}
        resp = httpx.request(method, gateway.url + path, headers=headers, timeout=30, **request)
        where = f"{method} {path} -> {resp.status_code} {resp.text[:300]}"
        assert resp.status_code == status, where
        body = check(resp.json(), "ErrorResponse")
        assert body["error"]["message"], where
        if code is not None:
            assert body["error"]["code"] == code, where
        if status == 400:
            assert body["error"]["param"], where
    with gateway.client(key) as http:
        video = ok(http.post("/v1/videos", json={"prompt": "waves"}), "VideoResource")
        early = http.get(f"/v1/videos/{video['id']}/content")
        assert early.status_code == 404 and check(early.json(), "ErrorResponse")["error"]["code"] == "video_not_ready"
        # An upstream that breaks off mid-stream: the last event is an error in the same envelope.
        with http.stream("POST", chat, json={"model": "gpt-4o", "stream": True, "messages": [
                {"role": "user", "content": f"a long story {STREAM_CUT_MARKER}"}]}) as resp:
            lines = [line for line in resp.iter_lines() if line]
        assert check(orjson.loads(lines[-1].removeprefix("data: ")), "ErrorResponse")["error"]["code"]
        for line in lines[:-1]:
            check(orjson.loads(line.removeprefix("data: ")), "CreateChatCompletionStreamResponse")


def test_the_simulators_own_video_objects(sim: Any) -> None:
    """What the gateway's OpenAI adapter polls (not passed through, but it must be OpenAI's shape)."""
    with httpx.Client(base_url=f"{sim.base_url}/v1", headers={"Authorization": "Bearer sim-key"}, timeout=30) as http:
        ok(http.get("/models"), "ListModelsResponse")
        created = ok(http.post("/videos", json={"prompt": "a quay at dusk", "model": "sora-2"}), "VideoResource")
        done = wait_for(lambda: (v := ok(http.get(f"/videos/{created['id']}"), "VideoResource"))["status"]
                        in ("completed", "failed") and v, timeout=60, what="the simulated video")
        assert done["status"] == "completed" and done["expires_at"] > done["completed_at"]
        missing = http.get("/videos/video_0")
        assert missing.status_code == 404 and check(missing.json(), "ErrorResponse")["error"]["code"]
