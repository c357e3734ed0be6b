"""The customer commands of ``tidehub``: run a model, browse models, follow tasks, see the balance.

They talk to a gateway over HTTP through the client (``TIDEHUB_URL`` and ``TIDEHUB_API_KEY``, or
``--url`` and ``--key``), so they work from any machine with a key; ``register`` adds them to the
operator CLI's typer app (tidehub/cli.py).
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any, Iterator, Optional

import fastjsonschema
import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from tidehub.client.errors import APIError, TaskError, TidehubError
from tidehub.client.sync import Tidehub
from tidehub.client.types import Task, TaskEvent

err = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)

Url = typer.Option(None, "--url", envvar="TIDEHUB_URL", help="The gateway (else http://127.0.0.1:8000).")
Key = typer.Option(None, "--key", envvar="TIDEHUB_API_KEY", help="Your API key.", show_default=False)
AsJson = typer.Option(False, "--json", help="Print the task as JSON instead.")


class InputError(TidehubError):
    """The input given on the command line does not fit the model's schema."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


# -- input from the command line ---------------------------------------------------------------

def _properties(model: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every input field the model takes, over all its modes."""
    schemas = [model.get("input_schema") or {}] + [m["input_schema"] for m in model.get("mode_schemas") or []]
    merged: dict[str, dict[str, Any]] = {}
    for schema in schemas:
        for name, spec in (schema.get("properties") or {}).items():
            merged.setdefault(name, spec)
    return merged


def _kind(spec: dict[str, Any]) -> str | None:
    kind = spec.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), None)
    if kind is None and isinstance(spec.get("enum"), list) and spec["enum"]:
        kind = {bool: "boolean", int: "integer", float: "number"}.get(type(spec["enum"][0]), "string")
    return kind


def typed(name: str, raw: str, spec: dict[str, Any]) -> Any:
    """A ``-i name=raw`` value as the schema's type: numbers, booleans, lists (``a,b``), JSON objects."""
    kind = _kind(spec)
    field = f"input.{name}"
    if kind == "integer":
        try:
            return int(raw)
        except ValueError:
            raise InputError(field, f"must be an integer, got {raw!r}") from None
    if kind == "number":
        try:
            return float(raw) if any(c in raw for c in ".eE") else int(raw)
        except ValueError:
            raise InputError(field, f"must be a number, got {raw!r}") from None
    if kind == "boolean":
        word = raw.strip().lower()
        if word in ("true", "yes", "1", "on"):
            return True
        if word in ("false", "no", "0", "off"):
            return False
        raise InputError(field, f"must be true or false, got {raw!r}")
    if kind == "array":
        if raw.strip().startswith("["):
            return _json(field, raw)
        items = spec.get("items") if isinstance(spec.get("items"), dict) else {}
        return [typed(name, part.strip(), items) for part in raw.split(",") if part.strip()] if raw.strip() else []
    if kind == "object":
        return _json(field, raw)
    return raw


def _json(field: str, raw: str) -> Any:
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise InputError(field, f"must be JSON ({exc})") from None


def build_input(model: dict[str, Any], pairs: list[str], input_file: Path | None) -> dict[str, Any]:
    """The input from ``--input-file`` and ``-i key=value`` pairs (which win), typed by the schema."""
    data: dict[str, Any] = {}
    if input_file is not None:
        try:
            data = json.loads(input_file.read_text())
        except (OSError, ValueError) as exc:
            raise InputError("--input-file", f"cannot be read as JSON: {exc}") from None
        if not isinstance(data, dict):
            raise InputError("--input-file", "must hold a JSON object")
    properties = _properties(model)
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        name = name.strip()
        if not sep or not name:
            raise InputError("-i", f"expected key=value, got {pair!r}")
        data[name] = typed(name, raw, properties.get(name, {}))
    return data


def check_input(model: dict[str, Any], data: dict[str, Any]) -> None:
    """Refuse, before submitting, an input that fits none of the model's modes (naming the field)."""
    schemas = [model["input_schema"]] + [m["input_schema"] for m in model.get("mode_schemas") or []]
    first: InputError | None = None
    for schema in schemas:
        try:
            fastjsonschema.compile(schema)(json.loads(json.dumps(data)))
            return
        except fastjsonschema.JsonSchemaValueException as exc:
            first = first or _schema_error(exc, data, schema)
    assert first is not None
    raise first


def _schema_error(exc: fastjsonschema.JsonSchemaValueException, data: dict[str, Any],
                  schema: dict[str, Any]) -> InputError:
    path = [str(p) for p in (exc.path or ["data"])[1:]]
    where = "input" + "".join(f"[{p}]" if p.isdigit() else f".{p}" for p in path)
    if exc.rule == "required" and not path:
        missing = [n for n in exc.rule_definition or [] if n not in data]
        return InputError(f"input.{missing[0]}" if missing else "input", "is required")
    if exc.rule == "additionalProperties" and not path:
        extra = sorted(set(data) - set(schema.get("properties") or {}))
        allowed = ", ".join(sorted(schema.get("properties") or {}))
        return InputError(f"input.{extra[0]}" if extra else "input", f"unknown field; allowed fields are {allowed}")
    message = exc.message
    prefix = exc.name or "data"
    if message.startswith(prefix):
        message = message[len(prefix):].strip()
    return InputError(where, message)


# -- showing things ----------------------------------------------------------------------------

def _fail(message: str, code: int = 1) -> typer.Exit:
    err.print(f"[red]error:[/red] {message}", highlight=False)
    return typer.Exit(code)


def _client(url: Optional[str], key: Optional[str]) -> Tidehub:
    try:
        return Tidehub(url, key=key)
    except TidehubError as exc:
        raise _fail(str(exc), 2) from None


@contextlib.contextmanager
def _errors() -> Iterator[None]:
    """The client's errors as one line on stderr and an exit status (2: your input, 1: the rest)."""
    try:
        yield
    except InputError as exc:
        raise _fail(f"{exc} (nothing was submitted)", 2) from None
    except APIError as exc:
        where = f" [{exc.field}]" if exc.field else ""
        raise _fail(f"{exc.message} ({exc.code}, HTTP {exc.status}){where}", 2 if 400 <= exc.status < 500 else 1
                    ) from None
    except TaskError as exc:
        raise _fail(str(exc)) from None
    except TidehubError as exc:
        raise _fail(str(exc)) from None


def _task_table(task: Task) -> Table:
    table = Table(show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column()
    raw = task.raw
    for label, value in (("task", task.id), ("model", task.model), ("status", task.status),
                         ("progress", f"{task.progress}%"), ("queue position", task.queue_position),
                         ("error", f"{task.error_code}: {task.error_message}" if task.error_code else None),
                         ("created", raw.get("created_at")), ("completed", raw.get("completed_at"))):
        if value is not None:
            table.add_row(label, str(value))
    for item in task.files:
        table.add_row("file", item["url"])
    return table


class _Live:
    """A progress bar on stderr fed by a task's events: status, queue position, progress, elapsed."""

    def __init__(self, model: str, enabled: bool) -> None:
        self.progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                                 TaskProgressColumn(), TimeElapsedColumn(), console=err, disable=not enabled,
                                 transient=False)
        self.model = model
        self.bar = self.progress.add_task(f"{model}: submitting", total=100)

    def __enter__(self) -> "_Live":
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def __call__(self, event: TaskEvent) -> None:
        data = event.data
        if event.type == "status":
            self.progress.update(self.bar, description=f"{self.model}: {data['status']}")
        elif event.type == "queue" and data.get("queue_position") is not None:
            self.progress.update(self.bar, description=f"{self.model}: queued, position {data['queue_position']}")
        elif event.type == "progress":
            self.progress.update(self.bar, completed=data["progress"],
                                 description=f"{self.model}: processing")
        elif event.type == "log":
            self.progress.console.print(f"[dim]{data.get('message', '')}[/dim]", highlight=False, markup=True)
        elif event.type == "task" and event.task is not None:
            self.progress.update(self.bar, completed=event.task.progress,
                                 description=f"{self.model}: {event.task.status}")


def _describe(spec: dict[str, Any]) -> str:
    parts = []
    if "enum" in spec:
        parts.append("one of " + ", ".join(str(v) for v in spec["enum"]))
    for key, label in (("minimum", "≥"), ("maximum", "≤"), ("minLength", "length ≥"), ("maxLength", "length ≤"),
                       ("maxItems", "items ≤")):
        if key in spec:
            parts.append(f"{label} {spec[key]}")
    return "; ".join(parts)


# -- the commands ------------------------------------------------------------------------------

def register(app: typer.Typer) -> None:
    """Add the customer commands (run, models, tasks, balance) to ``app``."""
    models_app = typer.Typer(help="The models you can run, with their inputs and prices.",
                             invoke_without_command=True)
    tasks_app = typer.Typer(no_args_is_help=True, help="Look at, wait for and cancel your tasks.")
    app.add_typer(models_app, name="models")
    app.add_typer(tasks_app, name="tasks")

    @app.command("run")
    def run(
        model: str = typer.Argument(..., help="A model id (see `tidehub models`)."),
        inputs: list[str] = typer.Option([], "-i", "--input", help="An input field: key=value (repeat it). "
                                         "Typed by the model's schema: num_images=2, sync_mode=true, tags=a,b."),
        input_file: Optional[Path] = typer.Option(None, "--input-file", help="A JSON object of input fields "
                                                  "(-i values override it)."),
        out_dir: Path = typer.Option(Path("."), "--out", help="Where to save the result files."),
        as_json: bool = typer.Option(False, "--json", help="Print the finished task as JSON (and the saved "
                                     "files under `downloaded`), with no progress bar."),
        timeout: Optional[float] = typer.Option(None, "--timeout", help="Give up waiting after this many seconds."),
        url: Optional[str] = Url,
        key: Optional[str] = Key,
    ) -> None:
        """Run a model: submit, show its progress live, save its result files and print their paths."""
        with _client(url, key) as hub, _errors():
            info = hub.model(model)
            data = build_input(info, inputs, input_file)
            check_input(info, data)
            with _Live(model, enabled=not as_json) as live:
                task = hub.run(model, data, on_event=live, timeout=timeout)
            paths = hub.download(task, out_dir)
            if as_json:
                print(json.dumps({**task.raw, "downloaded": [str(p) for p in paths]}, indent=2))
            else:
                if not paths:
                    print(json.dumps(task.output, indent=2))  # a transcript or other output with no file
                for path in paths:
                    print(path)

    @models_app.callback()
    def models(
        ctx: typer.Context,
        capability: Optional[str] = typer.Option(None, "--capability", help="image, video, audio or transcribe."),
        as_json: bool = typer.Option(False, "--json", help="Print them as JSON."),
        url: Optional[str] = Url,
        key: Optional[str] = Key,
    ) -> None:
        """List the models (or `tidehub models show MODEL`)."""
        if ctx.invoked_subcommand is not None:
            return
        with _client(url, key) as hub, _errors():
            rows = hub.models(capability)
        if as_json:
            print(json.dumps(rows, indent=2))
            return
        table = Table("model", "capability", "vendor", "modes", "description")
        for row in rows:
            table.add_row(row["id"], row["capability"], row.get("vendor") or "", ", ".join(row.get("modes") or []),
                          (row.get("description") or "")[:80])
        out.print(table)

    @models_app.command("show")
    def models_show(model: str = typer.Argument(..., help="A model id."), as_json: bool = AsJson,
                    url: Optional[str] = Url, key: Optional[str] = Key) -> None:
        """A model's input fields, its example and what the example costs."""
        with _client(url, key) as hub, _errors():
            info = hub.model(model)
        if as_json:
            print(json.dumps(info, indent=2))
            return
        out.print(f"[bold]{info['id']}[/bold] ({info['capability']}, {info.get('vendor')}): {info.get('description')}")
        schema = info.get("input_schema") or {}
        required = set(schema.get("required") or [])
        table = Table("field", "type", "required", "default", "allowed", "description", title="input")
        for name, spec in _properties(info).items():
            kind = _kind(spec) or ""
            if kind == "array" and isinstance(spec.get("items"), dict):
                kind = f"list of {_kind(spec['items']) or 'values'}"
            table.add_row(name, kind, "yes" if name in required else "", json.dumps(spec["default"])
                          if "default" in spec else "", _describe(spec), (spec.get("description") or "")[:100])
        out.print(table)
        example = (info.get("example") or {}).get("input")
        if example is not None:
            out.print("[bold]example input[/bold]")
            out.print_json(json.dumps(example))
        if info.get("example_price") is not None:
            out.print(f"[bold]example price:[/bold] {info['example_price']} credits")

    def _show(task: Task, as_json: bool) -> None:
        if as_json:
            print(json.dumps(task.raw, indent=2))
        else:
            out.print(_task_table(task))

    @tasks_app.command("show")
    def tasks_show(task_id: str, as_json: bool = AsJson, url: Optional[str] = Url, key: Optional[str] = Key) -> None:
        """A task as it stands."""
        with _client(url, key) as hub, _errors():
            _show(hub.get(task_id), as_json)

    @tasks_app.command("wait")
    def tasks_wait(task_id: str, timeout: Optional[float] = typer.Option(None, "--timeout"), as_json: bool = AsJson,
                   url: Optional[str] = Url, key: Optional[str] = Key) -> None:
        """Wait until a task ends and show it (exit status 1 unless it completed)."""
        with _client(url, key) as hub, _errors():
            task = hub.wait(task_id, timeout=timeout)
        _show(task, as_json)
        if task.status != "completed":
            raise typer.Exit(1)

    @tasks_app.command("cancel")
    def tasks_cancel(task_id: str, as_json: bool = AsJson, url: Optional[str] = Url,
                     key: Optional[str] = Key) -> None:
        """Cancel a task (what it held goes back to your balance)."""
        with _client(url, key) as hub, _errors():
            _show(hub.cancel(task_id), as_json)

    @app.command("balance")
    def balance(as_json: bool = typer.Option(False, "--json", help="Print it as JSON."),
                url: Optional[str] = Url, key: Optional[str] = Key) -> None:
        """Your credits: available, held by running tasks, spent."""
        with _client(url, key) as hub, _errors():
            account = hub.account()
        if as_json:
            print(json.dumps(account, indent=2))
            return
        table = Table("available", "held", "spent", "added in all")
        table.add_row(*(f"{account.get(k, 0):,}" for k in ("balance", "held", "spent", "total_added")))
        out.print(table)


