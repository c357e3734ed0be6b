"""Request bodies as HTML forms: ``multipart/form-data`` uploads and url-encoded fields.

Starlette's own form parser needs ``python-multipart``, which the gateway does not otherwise depend
on; the OpenAI upload endpoints (audio, image edits, videos) only need the whole body split into
named fields and files, which the standard library's header parsing does well enough.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from email.message import Message
from urllib.parse import parse_qsl


class FormError(ValueError):
    """The body is not the form its ``Content-Type`` says it is."""


@dataclass(frozen=True, slots=True)
class UploadedFile:
    filename: str
    content_type: str
    data: bytes


@dataclass(slots=True)
class Form:
    """Fields and files by name, in arrival order; a name sent twice (``image[]``) keeps both."""

    fields: dict[str, list[str]] = field(default_factory=dict)
    files: dict[str, list[UploadedFile]] = field(default_factory=dict)

    def get(self, name: str) -> str | None:
        values = self.fields.get(name)
        return values[0] if values else None

    def get_list(self, name: str) -> list[str]:
        """Every value of ``name``, sent as ``name`` or ``name[]`` (the OpenAI SDK's array form)."""
        return [*self.fields.get(name, []), *self.fields.get(f"{name}[]", [])]

    def get_files(self, name: str) -> list[UploadedFile]:
        return [*self.files.get(name, []), *self.files.get(f"{name}[]", [])]

    def names(self) -> set[str]:
        return set(self.fields) | set(self.files)


def is_form(content_type: str) -> bool:
    kind = content_type.split(";", 1)[0].strip().lower()
    return kind in ("multipart/form-data", "application/x-www-form-urlencoded")


def parse_form(content_type: str, body: bytes) -> Form:
    """Split a ``multipart/form-data`` or url-encoded body; ``FormError`` when it is malformed."""
    header = Message()
    header["content-type"] = content_type
    kind = header.get_content_type()
    form = Form()
    if kind == "application/x-www-form-urlencoded":
        for name, value in parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True):
            form.fields.setdefault(name, []).append(value)
        return form
    if kind != "multipart/form-data":
        raise FormError(f"expected a multipart/form-data body, got {kind!r}")
    boundary = header.get_param("boundary")
    if not isinstance(boundary, str) or not boundary:
        raise FormError("multipart/form-data without a boundary")
    delimiter = b"\r\n--" + boundary.encode("latin-1")
    parts = (b"\r\n" + body).split(delimiter)
    if len(parts) < 2 or not parts[-1].startswith(b"--"):
        raise FormError("multipart body is not terminated by its closing boundary")
    for part in parts[1:-1]:
        _add_part(form, part)
    return form


def _add_part(form: Form, part: bytes) -> None:
    head, separator, data = part.partition(b"\r\n\r\n")
    if not separator:
        raise FormError("multipart part without a header block")
    headers = Message()
    for line in head.decode("utf-8", "replace").split("\r\n"):
        name, colon, value = line.partition(":")
        if colon:
            headers[name.strip()] = value.strip()
    name = headers.get_param("name", header="content-disposition")
    if not isinstance(name, str):
        raise FormError("multipart part without a field name")
    filename = headers.get_filename()
    if filename is None:
        form.fields.setdefault(name, []).append(data.decode("utf-8", "replace"))
    else:
        content_type = headers.get("content-type", "application/octet-stream")
        form.files.setdefault(name, []).append(UploadedFile(filename, content_type, data))
