"""Core's ports: what core needs from an upstream adapter, in core's own terms.

Adapters (tidehub/providers) implement these; core never imports an adapter. The composition root
(gateway.py) hands core the registry of adapter factories by name.

Two ports, because two kinds of work reach an upstream:

* :class:`TaskAdapter`: an asynchronous job (submit, poll its state, fetch its result, cancel,
  verify the upstream's callback). Every adapter implements it.
* :class:`RelayAdapter`: one synchronous call or stream per client request, for the relay. Only
  adapters of OpenAI-compatible upstreams implement it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable, Literal, Mapping, Protocol, runtime_checkable


class UpstreamError(Exception):
    """An upstream refusal or failure. ``retryable`` says whether trying again may help."""

    def __init__(
        self,
        message: str,
        *,
        code: str = "upstream_error",
        retryable: bool = False,
        status: int | None = None,
        field: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.retryable = retryable
        self.status = status
        self.field = field
        self.retry_after = retry_after


@dataclass
class Job:
    """What an adapter needs to find an upstream job again; stored with the task."""

    ref: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class JobState:
    state: Literal["queued", "running", "completed", "failed"]
    queue_position: int | None = None
    logs: list[dict[str, Any]] = field(default_factory=list)
    error: UpstreamError | None = None


class TaskAdapter(Protocol):
    name: str
    #: Headers every genuine callback of this upstream carries (lower case), checked before the
    #: callback's body is read; empty for unsigned callbacks.
    callback_headers: tuple[str, ...]

    async def submit(self, model: str, payload: dict[str, Any], *, callback_url: str | None = None,
                     spec: Mapping[str, Any] | None = None) -> Job:
        """Start an upstream job. ``spec`` is the catalog entry's upstream spec for this adapter
        (``{model, api?, rename?}``): ``api`` picks the vendor surface where an adapter speaks several.
        An adapter for a synchronous surface does the whole call here and returns a Job that
        ``status`` reports completed (its answer kept in ``Job.data``)."""
        ...

    async def status(self, job: Job) -> JobState: ...

    async def result(self, job: Job) -> dict[str, Any]: ...

    async def cancel(self, job: Job) -> None: ...

    async def verify_callback(self, headers: Mapping[str, str], body: bytes) -> str:
        """Check an upstream callback is genuine; return the upstream job id it is about. A
        ``retryable`` error means it could not be checked now (the vendor's keys unreachable)."""
        ...

    def auth_headers_for(self, url: str) -> dict[str, str]:
        """Headers a download of a result ``url`` needs (the vendor's own file URLs may want the key)."""
        ...

    async def close(self) -> None: ...


class EventStream(Protocol):
    """An upstream stream of server-sent events, read in batches of whole events."""

    def batches(self) -> AsyncIterator[list[bytes]]: ...

    async def aclose(self) -> None: ...


@runtime_checkable
class RelayAdapter(Protocol):
    """One synchronous upstream call per client request (the relay)."""

    async def call(self, path: str, body: dict[str, Any] | None = None, *, form: Any = None,
                   method: str = "POST") -> tuple[int, dict[str, str], bytes]:
        """The upstream's answer as it came (status, selected headers, body); raises
        ``UpstreamError`` only when no answer came."""
        ...

    async def stream(self, path: str, body: dict[str, Any]) -> EventStream: ...

    def classify(self, status: int, headers: Mapping[str, str], body: bytes) -> UpstreamError | None:
        """An answer's error in core's terms, or None for a success."""
        ...

    def usage_of(self, event: bytes) -> dict[str, Any] | None: ...


#: name -> factory(base_url, credential, **options); gateway.py hands core the registry.
AdapterFactory = Callable[..., TaskAdapter]
AdapterRegistry = Mapping[str, AdapterFactory]


def can_relay(adapter: object) -> bool:
    """Does this adapter (or adapter class) take relayed calls?"""
    return callable(getattr(adapter, "call", None)) and callable(getattr(adapter, "stream", None))


class Watch(Protocol):
    """One waiter's interest in one task's changes (see :class:`TaskChanges`)."""

    async def wait(self, timeout: float) -> bool:
        """Until the task changes (True) or ``timeout`` seconds pass (False)."""
        ...

    def close(self) -> None: ...


class TaskChanges(Protocol):
    """"Wake me when task X changes": lets a live event stream or a ``wait`` answer at once rather
    than at its next look at the database. Only ever a hint: waiters read the database anyway, and
    look again after a short while when no wake-up comes (another process changed the task)."""

    def watch(self, task_id: str) -> Watch:
        """Start watching before reading the task, so a change between the read and the wait is not missed."""
        ...

    def changed(self, task_id: str) -> None:
        """A task's row or events changed (committed)."""
        ...
