"""Multipart uploads to the relay are counted as they arrive: one past the limit is refused with a
413 in the OpenAI envelope there and then, and the rest of it is never read."""

from __future__ import annotations

import io
import select
import socket
from typing import Any, Iterator

import httpx
import orjson
import pytest
from PIL import Image

from conftest import GatewayServer

LIMIT = 4 * 1024 * 1024
CHUNK = 64 * 1024
#: What the client would send in all: far past the limit, generated as it is sent.
TOTAL = 256 * 1024 * 1024
BOUNDARY = "tidehub-upload-test"

FORMS = [
    ("/v1/images/edits", "image", {"model": "gpt-image-1", "prompt": "make it blue"}),
    ("/v1/audio/transcriptions", "file", {"model": "whisper-1"}),
    ("/api/relay/v1/audio/translations", "file", {"model": "whisper-1"}),
]


@pytest.fixture
def gateway(make_gateway: Any) -> GatewayServer:
    return make_gateway(max_upload_bytes=LIMIT, more_upstreams=False)


def form_head(fields: dict[str, str], file_field: str) -> bytes:
    parts = [f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
             for name, value in fields.items()]
    parts.append(f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{file_field}"; filename="big.bin"\r\n'
                 "Content-Type: application/octet-stream\r\n\r\n")
    return "".join(parts).encode()


def endless_file(head: bytes) -> Iterator[bytes]:
    """The multipart body, lazily: the form's head, then file bytes up to ``TOTAL`` in all."""
    yield head
    sent = len(head)
    block = b"\0" * CHUNK
    while sent < TOTAL:
        yield block
        sent += len(block)
    yield f"\r\n--{BOUNDARY}--\r\n".encode()


def chunked_upload(url: str, path: str, key: str, body: Iterator[bytes]) -> tuple[bytes, int]:
    """POST ``body`` with ``Transfer-Encoding: chunked`` until the gateway answers or stops taking
    it; returns the answer and how many body bytes were handed to the socket."""
    host, port = url.removeprefix("http://").split(":")
    head = (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n"
            f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\nTransfer-Encoding: chunked\r\n\r\n")
    sent = 0
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(head.encode())
        try:
            for chunk in body:
                if select.select([sock], [], [], 0)[0]:
                    break  # the gateway answered before the body ended
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                sent += len(chunk)
            else:
                sock.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # it stopped reading: its answer is waiting
        answer = b""
        try:
            while data := sock.recv(65536):
                answer += data
        except ConnectionResetError:
            pass
    return answer, sent


@pytest.mark.parametrize("path,file_field,fields", FORMS)
def test_a_chunked_upload_past_the_limit_is_cut_short(gateway: GatewayServer, path: str, file_field: str,
                                                      fields: dict[str, str]) -> None:
    key = gateway.new_key()
    answer, sent = chunked_upload(gateway.url, path, key, endless_file(form_head(fields, file_field)))
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413"), answer[:300]
    assert b"connection: close" in head.lower()
    error = orjson.loads(body)["error"]
    assert error["code"] == "payload_too_large" and error["type"] == "invalid_request_error"
    assert str(LIMIT) in error["message"]
    # Refused once the limit had passed, not at the end: only the limit and what the sockets'
    # buffers hold in between were taken, of the 256 MiB the client had to send.
    assert LIMIT < sent < TOTAL // 8


def test_an_ordinary_client_gets_the_413_too(gateway: GatewayServer) -> None:
    key = gateway.new_key()
    head = form_head({"model": "whisper-1"}, "file")
    answer = httpx.post(f"{gateway.url}/v1/audio/transcriptions", content=endless_file(head), timeout=60,
                        headers={"Authorization": f"Bearer {key}",
                                 "Content-Type": f"multipart/form-data; boundary={BOUNDARY}"})
    assert answer.status_code == 413 and answer.json()["error"]["code"] == "payload_too_large"


def test_an_upload_within_the_limit_is_relayed(gateway: GatewayServer) -> None:
    """Counting as it arrives still passes a whole upload just under the limit, sent chunked."""
    key = gateway.new_key()
    image = io.BytesIO()
    Image.new("RGB", (64, 64), (10, 20, 30)).save(image, format="PNG")
    png = image.getvalue()
    padding = LIMIT - len(png) - 4096  # PNG readers ignore what follows the IEND chunk
    upload = png + b"\0" * padding

    def body() -> Iterator[bytes]:
        yield form_head({"model": "gpt-image-1", "prompt": "make it blue", "quality": "low"}, "image")
        for start in range(0, len(upload), CHUNK):
            yield upload[start:start + CHUNK]
        yield f"\r\n--{BOUNDARY}--\r\n".encode()

    answer = httpx.post(f"{gateway.url}/v1/images/edits", content=body(), timeout=60,
                        headers={"Authorization": f"Bearer {key}",
                                 "Content-Type": f"multipart/form-data; boundary={BOUNDARY}"})
    assert answer.status_code == 200, answer.text
    assert answer.json()["data"][0]["b64_json"]
