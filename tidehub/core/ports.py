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
from typing import Any, AsyncIterator, Callable, Literal, Mapping, Protocol, Sequence, runtime_checkable


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
        # An upstream's text is stored with the task, and PostgreSQL's text columns cannot hold NUL.
        message = message.replace("\x00", "\ufffd")
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


@dataclass
class Upload:
    """A file a client uploaded with a relayed call, passed on to the upstream as it came."""

    name: str
    filename: str
    content_type: str
    data: bytes


@dataclass
class RelayAnswer:
    """An upstream's successful answer to a relayed call: what the client is sent (the client and
    the upstream speak the same protocol), and what only the answer tells the price."""

    status: int
    headers: dict[str, str]  # for the client: content-type, x-request-id
    body: bytes
    measured: dict[str, float] = field(default_factory=dict)  # e.g. audio_minutes of a transcript


class RelayStream(Protocol):
    """An upstream's streamed answer, passed on as it arrives, metered as it goes."""

    #: Content chunks passed on so far (about one token each), and the upstream's own usage once it came.
    delivered: int
    usage: dict[str, Any] | None

    def chunks(self) -> AsyncIterator[bytes]:
        """The bytes to send the client, as they arrive; ``UpstreamError`` if the upstream broke off."""
        ...

    def close(self) -> None:
        """Let the upstream's answer go (read to its end or not); it never waits."""
        ...


@runtime_checkable
class RelayAdapter(Protocol):
    """One synchronous upstream call per client request (the relay).

    ``surface`` is where the call came in: ``chat``, ``embeddings``, ``images``, ``image-edits``,
    ``transcriptions`` or ``translations``. ``body`` is the client's, as it came (form fields as
    text); the adapter sends it with ``model`` put in, asks for what core's price needs (a stream's
    usage, a transcript's length) and answers in the shape the client asked for. An error answer,
    or none, raises ``UpstreamError``.
    """

    async def relay(self, surface: str, model: str, body: Mapping[str, Any],
                    files: Sequence[Upload] = ()) -> RelayAnswer: ...

    async def relay_stream(self, model: str, body: Mapping[str, Any]) -> RelayStream:
        """A streamed chat; refused before anything streamed raises here, so another channel may be tried."""
        ...


#: name -> factory(base_url, credential, **options); gateway.py hands core the registry.
AdapterFactory = Callable[..., TaskAdapter]
AdapterRegistry = Mapping[str, AdapterFactory]


def can_relay(adapter: object) -> bool:
    """Does this adapter (or adapter class) take relayed calls?"""
    return callable(getattr(adapter, "relay", None)) and callable(getattr(adapter, "relay_stream", None))


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
