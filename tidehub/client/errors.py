"""The client's errors: one base class, an API refusal, and one class per way a task can end badly."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tidehub.client.types import Task


class TidehubError(Exception):
    """Anything the client raises on purpose."""


class APIError(TidehubError):
    """The gateway refused a request: its HTTP status, error code, message and the field at fault."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(f"{status} {code}: {message}" + (f" (field {field})" if field else ""))
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.retry_after = retry_after


class ConnectionFailed(TidehubError):
    """The gateway could not be reached, even after the retries."""


class TaskError(TidehubError):
    """A task ended without a result; ``task`` is how it ended."""

    def __init__(self, task: "Task") -> None:
        detail = f": {task.error_message}" if task.error_message else ""
        super().__init__(f"task {task.id} {task.status}{detail}")
        self.task = task


class TaskFailed(TaskError):
    """The task failed (``task.error_code`` says why); it cost nothing."""


class TaskTimedOut(TaskError):
    """The gateway gave up on the task at its deadline; it cost nothing."""


class TaskCancelled(TaskError):
    """The task was cancelled (by you, or by an operator)."""


class WaitTimeout(TidehubError, TimeoutError):
    """The task was still running when the time you allowed ran out; it goes on at the gateway."""

    def __init__(self, task_id: str, timeout: float) -> None:
        super().__init__(f"task {task_id} did not finish within {timeout:g} s; it is still running")
        self.task_id = task_id
        self.timeout = timeout


class InvalidSignature(TidehubError):
    """A webhook delivery whose signature does not check out (or is too old): do not trust it."""
