"""The playground: pick a model, fill in a form made from its input schema, run it as a task (its
progress and result shown live below the form), or chat with a chat model (the answer streamed as
it arrives). A customer's runs are charged to their account through the key they signed in with;
an operator chooses the account (its newest active key pays, and the audit log says who ran it).
Tasks go through ``TaskService.submit`` and chats through ``Relay.stream``, as in the dialects."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any, AsyncIterator, Awaitable, Callable

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse
from starlette.routing import BaseRoute
from starlette.types import Receive, Scope, Send

from tidehub.catalog import Endpoint
from tidehub.console.forms import Form, client_address
from tidehub.console.pages.tasks import describe
from tidehub.console.schema_form import defaults_of, field_of_error, fields_of, read_input
from tidehub.console.security import SIGNED_IN, page
from tidehub.core.auth import Principal
from tidehub.errors import InvalidInput, NotFound, TidehubError

if TYPE_CHECKING:
    from tidehub.console.app import Console

RUNS = {"admin", "customer"}
CAPABILITIES = ("image", "video", "audio", "transcribe", "chat")
DEFAULT_MODEL = "google/nano-banana/text-to-image"
MAX_MESSAGES = 100
MAX_CHAT_CHARS = 100_000


class ChatStream(StreamingResponse):
    """The relay's events as they arrive; the call is settled when the response ends, however it
    ends (finished, upstream broke off, or the browser went away)."""

    def __init__(self, events: AsyncIterator[bytes], close: Callable[[], Awaitable[None]]) -> None:
        super().__init__(events, media_type="text/event-stream; charset=utf-8",
                         headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})
        self._close = close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._close()


def routes(c: "Console") -> list[BaseRoute]:
    gw = c.gw
    store = gw.store
    runnable = [e for e in gw.catalog.endpoints.values() if e.capability in CAPABILITIES and not e.relay_only]
    by_capability = {cap: [e for e in runnable if e.capability == cap] for cap in CAPABILITIES}

    def endpoint_of(slug: str) -> Endpoint:
        endpoint = next((e for e in runnable if e.slug == slug), None)
        if endpoint is None:
            raise NotFound(f"no model {slug[:80]!r} in the playground", field="model")
        return endpoint

    async def charged(request: Request, form: Form | None) -> Principal:
        """Who pays: the customer's own key (checked as an API call: revoked, expired, IP, models), or
        for an operator the chosen account's newest active key."""
        session = request.state.session
        if session.role == "customer":
            return await gw.auth.principal_of_key(session.key_id, client_address(request))
        account = form.text("account", required=True, max_length=40, label="Account") if form else ""
        keys = await store.call(store.keys.page, account_id=account, state="active", now=time.time(), limit=1)
        if not keys.rows:
            raise InvalidInput(f"Account: {account!r} does not exist or has no active key to charge the run to",
                               field="account")
        return await gw.auth.principal_of_key(keys.rows[0]["id"])

    async def view(request: Request, *, endpoint: Endpoint | None = None, values: dict[str, str] | None = None,
                   errors: dict[str, str] | None = None, status: int = 200) -> Response:
        session = request.state.session
        params = request.query_params
        endpoint = endpoint or endpoint_of(params.get("model") or DEFAULT_MODEL)
        fields = fields_of(endpoint)
        task = None
        if params.get("task"):
            account = session.account_id if session.role == "customer" else None
            task = await store.call(store.tasks.get, params["task"][:100], account)
            if task is not None and task["endpoint"] != endpoint.slug:
                task = None
        if values is None:
            values = defaults_of(endpoint, fields, task["input"] if task else None)
            if session.role != "customer":
                values["account"] = (task or {}).get("account_id") or params.get("account", "")[:40]
        live: dict[str, Any] = {}
        if task is not None:
            shown, extra = await describe(gw, session, task)
            live = {**shown, **extra}
        data = {"model": endpoint.slug, "title": endpoint.title, "capability": endpoint.capability,
                "description": endpoint.description,
                "fields": [f.__dict__ for f in fields] if endpoint.capability != "chat" else [],
                "example_price": _example_price(endpoint), "task_id": task["id"] if task else None}
        choices = [(cap, [(e.slug, e.title or e.slug) for e in entries]) for cap, entries in by_capability.items()
                   if entries]
        return c.render.page(request, "playground.html", data, status,
                             extra={"values": values, "errors": errors or {}, "choices": choices,
                                    "schema_fields": fields, "may_run": session.role in RUNS,
                                    "chat_example": _chat_example(endpoint), **live})

    async def playground(request: Request) -> Response:
        return await view(request)

    async def run(request: Request) -> Response:
        session = request.state.session
        form = await Form.read(request)
        endpoint = endpoint_of(form.text("model", required=True, max_length=200))
        if endpoint.capability == "chat":
            raise InvalidInput("chat models answer in the chat below, not as a task", field="model")
        fields = fields_of(endpoint)
        try:
            principal = await charged(request, form)
            data = read_input(form.data, fields)
            task = await gw.tasks.submit(principal, endpoint, data, id_prefix="hub",
                                         actor=session.actor(client_address(request))
                                         if session.role != "customer" else None)
        except TidehubError as exc:
            if exc.status not in (400, 403, 404, 409, 422):
                raise
            name = "account" if exc.field == "account" else field_of_error(exc.field, fields)
            if exc.code in ("insufficient_credits", "key_spend_cap", "model_not_allowed"):
                name = "input"
            return await view(request, endpoint=endpoint, values=form.values(), errors={name: exc.message},
                              status=422 if exc.status in (400, 422) else exc.status)
        return RedirectResponse(f"/console/playground?model={endpoint.slug}&task={task['id']}", status_code=303)

    async def chat(request: Request) -> Response:
        form = await Form.read(request)
        endpoint = endpoint_of(form.text("model", required=True, max_length=200))
        if endpoint.capability != "chat":
            raise InvalidInput(f"{endpoint.slug} is not a chat model", field="model")
        raw = str(form.data.get("messages") or "")
        if len(raw) > MAX_CHAT_CHARS:
            raise InvalidInput(f"messages: at most {MAX_CHAT_CHARS} characters in all", field="messages")
        try:
            messages = json.loads(raw)
        except ValueError:
            raise InvalidInput("messages: must be a JSON list of {role, content}", field="messages") from None
        if not isinstance(messages, list) or not messages or len(messages) > MAX_MESSAGES:
            raise InvalidInput(f"messages: a list of 1 to {MAX_MESSAGES} messages", field="messages")
        body: dict[str, Any] = {"model": endpoint.model, "messages": messages, "stream": True}
        system = form.text("system", max_length=4000)
        if system:
            body["messages"] = [{"role": "system", "content": system}, *messages]
        principal = await charged(request, form)
        # The relay validates the messages against the model's schema and checks the key's limits.
        events, close = await gw.relay.stream(principal, body)
        return ChatStream(events, close)

    return [
        page("/playground", playground, roles=SIGNED_IN),
        page("/playground", run, roles=RUNS, methods=["POST"]),
        page("/playground/chat", chat, roles=RUNS, methods=["POST"]),
    ]


def _example_price(endpoint: Endpoint) -> int | None:
    try:
        return endpoint.price.quote(endpoint.validate(endpoint.examples[0] if endpoint.examples else {})).credits
    except Exception:  # an example the schema refuses only loses the hint
        return None


def _chat_example(endpoint: Endpoint) -> str:
    if endpoint.capability != "chat" or not endpoint.examples:
        return ""
    messages = endpoint.examples[0].get("messages") or []
    return str(messages[-1].get("content", "")) if messages and isinstance(messages[-1], dict) else ""
