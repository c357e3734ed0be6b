"""The ``tidehub`` command: a thin shell over the gateway, the store and the simulator."""

from __future__ import annotations

import contextlib
import errno
import time
from pathlib import Path
from typing import Any, Iterator, Optional

import typer
from rich.console import Console
from rich.table import Table

from tidehub.config import Settings

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Tidehub: a self-hosted AI generation gateway.")
keys_app = typer.Typer(no_args_is_help=True, help="Create, list and revoke API keys.")
app.add_typer(keys_app, name="keys")
accounts_app = typer.Typer(no_args_is_help=True, help="Limits shared by all of an account's keys.")
app.add_typer(accounts_app, name="accounts")
credits_app = typer.Typer(no_args_is_help=True, help="Top up an account's credits.")
app.add_typer(credits_app, name="credits")
codes_app = typer.Typer(no_args_is_help=True, help="Make single-use redemption codes.")
app.add_typer(codes_app, name="codes")
channels_app = typer.Typer(no_args_is_help=True, help="Upstream accounts (channels) and their health.")
app.add_typer(channels_app, name="channels")
admin_app = typer.Typer(no_args_is_help=True, help="Console operators (who sign in at /console).")
app.add_typer(admin_app, name="admin")
err = Console(stderr=True)

DataDir = typer.Option(None, "--data-dir", help="Where the database and files live [env TIDEHUB_DATA_DIR].")
DatabaseUrl = typer.Option(None, "--database-url", help="SQLAlchemy URL; SQLite under the data dir if unset "
                                                        "[env TIDEHUB_DATABASE_URL].")


def _settings(data_dir: Optional[Path], database_url: Optional[str], **extra: Any) -> Settings:
    overrides: dict[str, Any] = {k: v for k, v in extra.items() if v is not None}
    if data_dir is not None:
        overrides["data_dir"] = data_dir
    if database_url is not None:
        overrides["database_url"] = database_url
    return Settings(**overrides)


def _store(settings: Settings):  # type: ignore[no-untyped-def]
    from tidehub.store import Store

    settings.make_data_dir()
    return Store(settings.db_url)


@app.command()
def serve(
    host: Optional[str] = typer.Option(None, help="Address to listen on [env TIDEHUB_HOST, default 127.0.0.1]."),
    port: Optional[int] = typer.Option(None, help="Port [env TIDEHUB_PORT, default 8000]."),
    data_dir: Optional[Path] = DataDir,
    database_url: Optional[str] = DatabaseUrl,
    demo: bool = typer.Option(False, "--demo", help="Run the upstream simulator too and print a ready API key."),
    workers: int = typer.Option(1, "--workers", min=1, help="Processes sharing the port (each one HTTP and engine)."),
    no_engine: bool = typer.Option(False, "--no-engine", help="HTTP only: leave the tasks to `tidehub worker` "
                                                              "or other gateways [env TIDEHUB_ENGINE_ENABLED=false]."),
) -> None:
    """Run the gateway (HTTP API and task engine)."""
    settings = _settings(data_dir, database_url, host=host, port=port, engine_enabled=False if no_engine else None)
    _configure_logs(settings)
    with _startup_errors():
        if workers > 1:
            from tidehub.server import serve_workers

            serve_workers(settings, workers=workers, demo=demo)
            return
        import uvloop

        from tidehub.server import run_gateway

        uvloop.run(run_gateway(settings, demo=demo))


@contextlib.contextmanager
def _startup_errors() -> Iterator[None]:
    """What keeps a gateway from starting because of how it was set up (no secret key for the
    stored credentials, an address in use) is said in one line, not as a traceback."""
    from tidehub.core.secrets_box import SecretKeyMissing

    try:
        yield
    except SecretKeyMissing as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise
        err.print(f"[red]error:[/red] cannot listen: {exc.strerror} (choose another with --port or "
                  "TIDEHUB_PORT; the demo's simulator with TIDEHUB_SIM_PORT)", highlight=False)
        raise typer.Exit(1) from None


def _configure_logs(settings: Settings) -> None:
    from tidehub import logs

    try:
        logs.configure(settings.log_format)
    except ValueError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None


@app.command()
def worker(data_dir: Optional[Path] = DataDir, database_url: Optional[str] = DatabaseUrl) -> None:
    """Run the task engine alone (steps, sweeps, webhook deliveries), for gateways started with --no-engine."""
    settings = _settings(data_dir, database_url)
    _configure_logs(settings)
    import uvloop

    from tidehub.server import run_engine

    with _startup_errors():
        uvloop.run(run_engine(settings))


@app.command()
def sim(
    host: str = typer.Option("127.0.0.1", help="Address to listen on."),
    port: int = typer.Option(8001, help="Port."),
    time_scale: float = typer.Option(1.0, "--time-scale", help="Multiplies every queue and run time."),
    key: str = typer.Option("sim-key", "--key", help="The fal key the simulator accepts."),
) -> None:
    """Run the upstream simulator alone (it speaks the fal.ai queue API)."""
    from tidehub.sim.server import run_sim

    err.print(f"simulator on http://{host}:{port} (fal key {key!r}, time scale {time_scale})")
    run_sim(host=host, port=port, time_scale=time_scale, api_key=key)


@keys_app.command("create")
def keys_create(
    name: str = typer.Option("", "--name", help="A label for the key."),
    account: Optional[str] = typer.Option(None, "--account", help="Add the key to this existing account."),
    credits: int = typer.Option(0, "--credits", min=0, help="Credits for the new account (or added to --account)."),
    spend_cap: Optional[int] = typer.Option(None, "--spend-cap", min=0, help="Most credits this key may spend."),
    expires: Optional[str] = typer.Option(None, "--expires", help="Expiry: an ISO date/time, or a span like 30d, 12h."),
    models: Optional[str] = typer.Option(None, "--models", help="Comma-separated models (Hub ids or slugs) allowed."),
    ips: Optional[str] = typer.Option(None, "--ips", help="Comma-separated client IPs or CIDRs allowed."),
    rpm: Optional[int] = typer.Option(None, "--rpm", min=1, help="Most requests per minute."),
    max_concurrency: Optional[int] = typer.Option(None, "--max-concurrency", min=1,
                                                  help="Most tasks (and relayed calls) at once."),
    data_dir: Optional[Path] = DataDir,
    database_url: Optional[str] = DatabaseUrl,
) -> None:
    """Create a key. The secret is printed once, alone on the last line."""
    from tidehub.catalog import load_catalog
    from tidehub.core.audit import Actor
    from tidehub.core.keys import KeyService

    settings = _settings(data_dir, database_url)
    with _refusals(_store(settings)) as store:
        service = KeyService(store, load_catalog([Path(p) for p in settings.catalog_dirs.split(":") if p]))
        key = service.create(
            name=name, account_id=account, credits=credits, spend_cap=spend_cap,
            expires_at=_expiry(expires), allowed_models=_split(models), allowed_ips=_split(ips), rpm=rpm,
            max_concurrency=max_concurrency, actor=Actor.cli(),
        )
    err.print(f"created key {key.key_id} for account {key.account_id}; the secret is shown only now:")
    print(key.secret)


LimitRpmOpt = typer.Option(None, "--rpm", min=0, help="Most requests per minute (0: no limit).")
LimitConcurrencyOpt = typer.Option(None, "--max-concurrency", min=0,
                                   help="Most tasks (and relayed calls) at once (0: no limit).")


def _rates(rpm: Optional[int], max_concurrency: Optional[int]) -> dict[str, Optional[int]]:
    """The limits given on the command line; 0 clears one."""
    given = {"rpm": rpm, "max_concurrency": max_concurrency}
    return {k: (v or None) for k, v in given.items() if v is not None}


@keys_app.command("update")
def keys_update(
    key_id: str = typer.Argument(..., help="The key id (key_…), as `keys list` shows it."),
    rpm: Optional[int] = LimitRpmOpt,
    max_concurrency: Optional[int] = LimitConcurrencyOpt,
    spend_cap: Optional[int] = typer.Option(None, "--spend-cap", min=0, help="Most credits this key may spend."),
    data_dir: Optional[Path] = DataDir,
    database_url: Optional[str] = DatabaseUrl,
) -> None:
    """Change a key's limits; running servers apply them within the key cache time (5 s by default)."""
    from tidehub.catalog import load_catalog
    from tidehub.core.keys import KeyService

    limits: dict[str, Any] = _rates(rpm, max_concurrency)
    if spend_cap is not None:
        limits["spend_cap"] = spend_cap
    settings = _settings(data_dir, database_url)
    with _refusals(_store(settings)) as store:
        service = KeyService(store, load_catalog([Path(p) for p in settings.catalog_dirs.split(":") if p]))
        row = service.update(key_id, actor=_cli_actor(), **limits)
    err.print(f"updated {key_id}: rpm {row['rpm'] or '-'}, max concurrency {row['max_concurrency'] or '-'}, "
              f"spend cap {row['spend_cap'] if row['spend_cap'] is not None else '-'}")


@accounts_app.command("limit")
def accounts_limit(
    account_id: str = typer.Argument(..., help="The account id (acct_…)."),
    rpm: Optional[int] = LimitRpmOpt,
    max_concurrency: Optional[int] = LimitConcurrencyOpt,
    data_dir: Optional[Path] = DataDir,
    database_url: Optional[str] = DatabaseUrl,
) -> None:
    """Limit all of an account's keys together; running servers apply it within the key cache time."""
    from tidehub.catalog import Catalog
    from tidehub.core.keys import KeyService

    with _refusals(_store(_settings(data_dir, database_url))) as store:
        row = KeyService(store, Catalog([])).limit_account(account_id, actor=_cli_actor(),
                                                                **_rates(rpm, max_concurrency))
    err.print(f"account {account_id}: rpm {row['rpm'] or '-'}, max concurrency {row['max_concurrency'] or '-'}")


@keys_app.command("list")
def keys_list(data_dir: Optional[Path] = DataDir, database_url: Optional[str] = DatabaseUrl) -> None:
    """List keys (never their secrets)."""
    store = _store(_settings(data_dir, database_url))
    rows = store.keys.list()
    store.close()
    table = Table("id", "account", "name", "prefix", "created", "revoked", "expires", "spent/cap", "models", "ips",
                  "rpm", "concurrency")
    for row in rows:
        table.add_row(
            row["id"], row["account_id"], row["name"], row["prefix"] + "…", _when(row["created_at"]),
            _when(row["revoked_at"]) if row["revoked_at"] else "",
            _when(row["expires_at"]) if row["expires_at"] else "",
            f"{row['spent']}/{row['spend_cap'] if row['spend_cap'] is not None else '-'}",
            ",".join(row["allowed_models"] or []), ",".join(row["allowed_ips"] or []),
            str(row["rpm"] or "-"), str(row["max_concurrency"] or "-"),
        )
    Console().print(table)


@keys_app.command("revoke")
def keys_revoke(
    key_id: str = typer.Argument(..., help="The key id (key_…), as `keys list` shows it."),
    data_dir: Optional[Path] = DataDir,
    database_url: Optional[str] = DatabaseUrl,
) -> None:
    """Revoke a key; running servers stop accepting it at once with Redis, else within the key cache
    time (5 s by default)."""
    from tidehub.core.audit import Actor, AuditLog

    from tidehub.core import notify

    settings = _settings(data_dir, database_url)
    store = _store(settings)
    done = store.keys.revoke(key_id, time.time())
    if done:
        AuditLog(store).record(Actor.cli(), "key.revoke", key_id)
        # With Redis, every running gateway drops the key from its cache now.
        notify.announce(settings.redis_url, settings.redis_prefix, notify.KEY_CHANGED, key_id)
    store.close()
    if not done:
        err.print(f"[red]error:[/red] no active key {key_id!r}")
        raise typer.Exit(2)
    err.print(f"revoked {key_id}")


@credits_app.command("add")
def credits_add(
    account_id: str = typer.Argument(..., help="The account (acct_…)."),
    amount: int = typer.Argument(..., min=1, help="Credits to add."),
    note: str = typer.Option("", "--note", help="Recorded in the ledger."),
    data_dir: Optional[Path] = DataDir,
    database_url: Optional[str] = DatabaseUrl,
) -> None:
    """Add credits to an account."""
    import asyncio as _asyncio

    from tidehub.core.accounts import AccountService
    from tidehub.core.audit import Actor

    with _refusals(_store(_settings(data_dir, database_url))) as store:
        balance = _asyncio.run(AccountService(store).top_up(account_id, amount, note, actor=Actor.cli()))
    print(f"{account_id}: added {amount}; balance {balance.credits} credits")


@codes_app.command("create")
def codes_create(
    credits: int = typer.Option(..., "--credits", min=1, help="Credits each code is worth."),
    count: int = typer.Option(1, "--count", min=1, max=100_000, help="How many codes."),
    expires: Optional[str] = typer.Option(None, "--expires", help="Expiry: an ISO date/time, or a span like 30d."),
    data_dir: Optional[Path] = DataDir,
    database_url: Optional[str] = DatabaseUrl,
) -> None:
    """Print COUNT new single-use codes, one per line (they are stored hashed: keep this output)."""
    from tidehub.core.accounts import create_codes
    from tidehub.core.audit import Actor

    with _refusals(_store(_settings(data_dir, database_url))) as store:
        codes = create_codes(store, credits, count, _expiry(expires), actor=Actor.cli())
    print("\n".join(codes))


@contextlib.contextmanager
def _refusals(store: Any) -> Iterator[Any]:
    """The store, closed after; a refusal of the core ends the command with its message."""
    from tidehub.errors import TidehubError

    try:
        yield store
    except TidehubError as exc:
        err.print(f"[red]error:[/red] {exc.message}")
        raise typer.Exit(2) from None
    finally:
        store.close()


@admin_app.command("create")
def admin_create(
    name: str = typer.Argument(..., help="The operator's sign-in name."),
    role: str = typer.Option("admin", "--role", help="admin (may change things) or viewer (sees, changes nothing)."),
    password_stdin: bool = typer.Option(False, "--password-stdin", help="Read the password from standard input "
                                                                         "instead of generating one."),
    data_dir: Optional[Path] = DataDir,
    database_url: Optional[str] = DatabaseUrl,
) -> None:
    """Create a console operator. A generated password is printed once, alone on the last line."""
    import sys as _sys

    from tidehub.core.audit import Actor
    from tidehub.core.operators import OperatorService

    password = _sys.stdin.readline().rstrip("\r\n") if password_stdin else None
    with _refusals(_store(_settings(data_dir, database_url))) as store:
        operator, password = OperatorService(store).create(name, role, password, actor=Actor.cli())
    err.print(f"created {operator.role} {operator.name!r}; sign in at /console")
    if not password_stdin:
        err.print("the password is shown only now:")
        print(password)


@admin_app.command("list")
def admin_list(data_dir: Optional[Path] = DataDir, database_url: Optional[str] = DatabaseUrl) -> None:
    """List operators (never their passwords)."""
    from tidehub.core.operators import OperatorService

    with _refusals(_store(_settings(data_dir, database_url))) as store:
        rows = OperatorService(store).list()
    table = Table("name", "role", "created", "last sign-in", "disabled")
    for row in rows:
        table.add_row(row["name"], row["role"], _when(row["created_at"]),
                      _when(row["last_login_at"]) if row["last_login_at"] else "",
                      _when(row["disabled_at"]) if row["disabled_at"] else "")
    Console(width=160).print(table)


@admin_app.command("reset-password")
def admin_reset_password(
    name: str = typer.Argument(...),
    password_stdin: bool = typer.Option(False, "--password-stdin", help="Read the new password from standard input."),
    data_dir: Optional[Path] = DataDir,
    database_url: Optional[str] = DatabaseUrl,
) -> None:
    """Give an operator a new password (ending their sessions); a generated one is printed last."""
    import sys as _sys

    from tidehub.core.audit import Actor
    from tidehub.core.operators import OperatorService

    given = _sys.stdin.readline().rstrip("\r\n") if password_stdin else None
    with _refusals(_store(_settings(data_dir, database_url))) as store:
        password = OperatorService(store).reset_password(name, given, actor=Actor.cli())
    err.print(f"new password for {name!r}; its sessions have ended")
    if not password_stdin:
        print(password)


@admin_app.command("disable")
def admin_disable(name: str = typer.Argument(...), data_dir: Optional[Path] = DataDir,
                  database_url: Optional[str] = DatabaseUrl) -> None:
    """Disable an operator: they can no longer sign in, and their sessions end now."""
    from tidehub.core.audit import Actor
    from tidehub.core.operators import OperatorService

    with _refusals(_store(_settings(data_dir, database_url))) as store:
        done = OperatorService(store).disable(name, actor=Actor.cli())
    err.print(f"disabled {name!r}" if done else f"{name!r} was disabled already")


@contextlib.contextmanager
def _channel_service(data_dir: Optional[Path], database_url: Optional[str]) -> Iterator[Any]:
    """The channel service over the configured store; its refusals end the command with a message."""
    from tidehub.catalog import load_catalog
    from tidehub.core.channels import ChannelError, ChannelService
    from tidehub.core.secrets_box import SecretBox, SecretKeyMissing
    from tidehub.providers import ADAPTERS

    settings = _settings(data_dir, database_url)
    store = _store(settings)
    catalog = load_catalog([Path(p) for p in settings.catalog_dirs.split(":") if p])
    try:
        yield ChannelService(store, catalog, SecretBox(settings.secret_key), ADAPTERS)
    except (ChannelError, SecretKeyMissing) as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    finally:
        store.close()


def _cli_actor() -> Any:
    from tidehub.core.audit import Actor

    return Actor.cli()


def _channel_settings(**values: Any) -> dict[str, Any]:
    out = {k: v for k, v in values.items() if v is not None}
    if "models" in out:
        out["models"] = _split(out["models"])
    return out


ModelsOpt = typer.Option(None, "--models", help="Comma-separated endpoint slugs it serves ('*' for all its adapter's).")
PriorityOpt = typer.Option(None, "--priority", help="Higher runs first.")
WeightOpt = typer.Option(None, "--weight", min=1, help="Share of traffic within its priority tier.")
ConcurrencyOpt = typer.Option(None, "--max-concurrency", min=1, help="Most upstream tasks at once.")
RpmOpt = typer.Option(None, "--rpm", min=1, help="Most submits per minute.")
KeyOpt = typer.Option(None, "--key", help="The upstream credential (stored encrypted; needs TIDEHUB_SECRET_KEY).")


@channels_app.command("add")
def channels_add(
    name: str = typer.Argument(..., help="A unique name."),
    adapter: str = typer.Option("fal", "--adapter", help="The upstream protocol."),
    base_url: str = typer.Option(..., "--base-url", help="The upstream's API base URL."),
    key: Optional[str] = KeyOpt,
    models: Optional[str] = ModelsOpt,
    priority: Optional[int] = PriorityOpt,
    weight: Optional[int] = WeightOpt,
    max_concurrency: Optional[int] = ConcurrencyOpt,
    rpm: Optional[int] = RpmOpt,
    data_dir: Optional[Path] = DataDir,
    database_url: Optional[str] = DatabaseUrl,
) -> None:
    """Add a channel (enabled)."""
    values = _channel_settings(models=models, priority=priority, weight=weight, max_concurrency=max_concurrency,
                               rpm=rpm)
    with _channel_service(data_dir, database_url) as service:
        print(service.add(name, adapter=adapter, base_url=base_url, secret=key or "", actor=_cli_actor(), **values))


@channels_app.command("update")
def channels_update(
    name: str = typer.Argument(..., help="Channel name or id."),
    base_url: Optional[str] = typer.Option(None, "--base-url"),
    key: Optional[str] = KeyOpt,
    models: Optional[str] = ModelsOpt,
    priority: Optional[int] = PriorityOpt,
    weight: Optional[int] = WeightOpt,
    max_concurrency: Optional[int] = ConcurrencyOpt,
    rpm: Optional[int] = RpmOpt,
    data_dir: Optional[Path] = DataDir,
    database_url: Optional[str] = DatabaseUrl,
) -> None:
    """Change a channel's settings; running gateways pick the change up within a second."""
    values = _channel_settings(base_url=base_url, models=models, priority=priority, weight=weight,
                               max_concurrency=max_concurrency, rpm=rpm)
    with _channel_service(data_dir, database_url) as service:
        service.update(name, secret=key, actor=_cli_actor(), **values)


@channels_app.command("disable")
def channels_disable(name: str = typer.Argument(...), data_dir: Optional[Path] = DataDir,
                     database_url: Optional[str] = DatabaseUrl) -> None:
    """Stop routing to a channel; its in-flight tasks move to other channels."""
    with _channel_service(data_dir, database_url) as service:
        service.update(name, enabled=False, actor=_cli_actor())


@channels_app.command("enable")
def channels_enable(name: str = typer.Argument(...), data_dir: Optional[Path] = DataDir,
                    database_url: Optional[str] = DatabaseUrl) -> None:
    """Route to a channel again."""
    with _channel_service(data_dir, database_url) as service:
        service.update(name, enabled=True, actor=_cli_actor())


@channels_app.command("list")
def channels_list(data_dir: Optional[Path] = DataDir, database_url: Optional[str] = DatabaseUrl) -> None:
    """Channels with their settings and last seen health."""
    with _channel_service(data_dir, database_url) as service:
        rows, health = service.store.channels.list(), service.store.channels.health()
    table = Table("name", "id", "adapter", "base url", "prio", "weight", "max", "rpm", "enabled", "breaker",
                  "requests/errors", "latency", "in flight")
    for row in rows:
        h = health.get(row["id"], {})
        table.add_row(
            row["name"], row["id"], row["adapter"], row["base_url"], str(row["priority"]), str(row["weight"]),
            str(row["max_concurrency"] or "-"), str(row["rpm"] or "-"), "yes" if row["enabled"] else "no",
            str(h.get("state", "-")), f"{h.get('requests', 0)}/{h.get('errors', 0)}",
            f"{h['latency_ms']} ms" if h.get("latency_ms") is not None else "-", str(h.get("in_flight", 0)),
        )
    Console(width=200).print(table)


@channels_app.command("test")
def channels_test(
    name: str = typer.Argument(..., help="Channel name or id."),
    endpoint: str = typer.Option("google/nano-banana/text-to-image", "--endpoint", help="Catalog endpoint to try."),
    timeout: float = typer.Option(120, "--timeout", help="Seconds to wait for the result."),
    data_dir: Optional[Path] = DataDir,
    database_url: Optional[str] = DatabaseUrl,
) -> None:
    """Send one real small request (the endpoint's example) through the channel; report latency and result."""
    import asyncio as _asyncio

    from tidehub.core.channel_check import check_channel

    with _channel_service(data_dir, database_url) as service:
        try:
            result = _asyncio.run(check_channel(service, name, endpoint, timeout))
        except Exception as exc:  # the report is the point: say what went wrong, plainly
            err.print(f"[red]failed:[/red] {exc}")
            raise typer.Exit(1) from None
    print(result)


def _split(value: Optional[str]) -> Optional[list[str]]:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def _expiry(value: Optional[str]) -> Optional[float]:
    if not value:
        return None
    units = {"d": 86400, "h": 3600, "m": 60, "s": 1}
    if value[-1] in units and value[:-1].isdigit():
        return time.time() + int(value[:-1]) * units[value[-1]]
    from datetime import datetime, timezone

    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise typer.BadParameter(f"{value!r} is neither an ISO date/time nor a span like 30d") from None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)).timestamp()


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts))


# The customer commands (run, models, tasks, balance): the client's, over HTTP with an API key.
from tidehub.client.cli import register as _register_client_commands  # noqa: E402

_register_client_commands(app)


def main() -> None:
    app()
