"""What the client returns: tasks and their events, in the Hub dialect's words."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: A task's statuses once it has ended.
FINISHED = ("completed", "failed", "timeout", "cancelled")


@dataclass(frozen=True)
class Task:
    """A task as ``GET /hub/v1/tasks/{id}`` shows it; ``raw`` is the whole JSON object."""

    id: str
    model: str
    status: str  # pending, processing, completed, failed, timeout, cancelled
    progress: int
    queue_position: int | None
    output: Any
    error_code: str | None
    error_message: str | None
    logs: list[dict[str, Any]]
    raw: dict[str, Any] = field(repr=False)

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> "Task":
        return cls(
            id=body["task_id"], model=body.get("model", ""), status=body["status"],
            progress=int(body.get("progress") or 0), queue_position=body.get("queue_position"),
            output=body.get("data"), error_code=body.get("error_code"), error_message=body.get("error_message"),
            logs=list(body.get("logs") or []), raw=body,
        )

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    @property
    def files(self) -> list[dict[str, Any]]:
        """Every result file of the task (objects with a ``url``), in the order of its output."""
        return _files_in(self.output)


@dataclass(frozen=True)
class TaskEvent:
    """One event of a task's live stream. ``type`` is status, progress, queue, log, or task (the
    last one of a stream: ``task`` is then the whole finished task). ``id`` is what a dropped
    stream resumes after (None for the queue position Tidehub works out as it answers)."""

    type: str
    data: dict[str, Any]
    id: str | None = None

    @property
    def task(self) -> Task | None:
        return Task.from_json(self.data) if self.type == "task" else None


def _files_in(value: Any) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    if isinstance(value, dict):
        if isinstance(value.get("url"), str):
            found.append(value)
        for child in value.values():
            if isinstance(child, (dict, list)):
                found.extend(_files_in(child))
    elif isinstance(value, list):
        for child in value:
            found.extend(_files_in(child))
    return found
