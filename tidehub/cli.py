"""The ``tidehub`` command: a thin shell over the gateway, the store and the simulator."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from tidehub.config import Settings

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Tidehub: a self-hosted AI generation gateway.")
keys_app = typer.Typer(no_args_is_help=True, help="Create, list and revoke API keys.")
app.add_typer(keys_app, name="keys")
credits_app = typer.Typer(no_args_is_help=True, help="Top up an account's credits.")
app.add_typer(credits_app, name="credits")
codes_app = typer.Typer(no_args_is_help=True, help="Make single-use redemption codes.")
app.add_typer(codes_app, name="codes")
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
    from tidehub.store.queries import Store

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return Store(settings.db_url)


@app.command()
def serve(
    host: Optional[str] = typer.Option(None, help="Address to listen on [env TIDEHUB_HOST, default 127.0.0.1]."),
    port: Optional[int] = typer.Option(None, help="Port [env TIDEHUB_PORT, default 8000]."),
    data_dir: Optional[Path] = DataDir,
    database_url: Optional[str] = DatabaseUrl,
    demo: bool = typer.Option(False, "--demo", help="Run the upstream simulator too and print a ready API key."),
) -> None:
    """Run the gateway (HTTP API and task engine)."""
    settings = _settings(data_dir, database_url, host=host, port=port)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    import uvloop

    from tidehub.server import run_gateway

    uvloop.run(run_gateway(settings, demo=demo))


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
    data_dir: Optional[Path] = DataDir,
    database_url: Optional[str] = DatabaseUrl,
) -> None:
    """Create a key. The secret is printed once, alone on the last line."""
    from tidehub.core.auth import create_key

    store = _store(_settings(data_dir, database_url))
    try:
        key = create_key(
            store, name=name, account_id=account, credits=credits, spend_cap=spend_cap,
            expires_at=_expiry(expires), allowed_models=_split(models), allowed_ips=_split(ips),
        )
    except ValueError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    finally:
        store.close()
    err.print(f"created key {key.key_id} for account {key.account_id}; the secret is shown only now:")
    print(key.secret)


@keys_app.command("list")
def keys_list(data_dir: Optional[Path] = DataDir, database_url: Optional[str] = DatabaseUrl) -> None:
    """List keys (never their secrets)."""
    store = _store(_settings(data_dir, database_url))
    rows = store.list_keys()
    store.close()
    table = Table("id", "account", "name", "prefix", "created", "revoked", "expires", "spent/cap", "models", "ips")
    for row in rows:
        table.add_row(
            row["id"], row["account_id"], row["name"], row["prefix"] + "…", _when(row["created_at"]),
            _when(row["revoked_at"]) if row["revoked_at"] else "",
            _when(row["expires_at"]) if row["expires_at"] else "",
            f"{row['spent']}/{row['spend_cap'] if row['spend_cap'] is not None else '-'}",
            ",".join(row["allowed_models"] or []), ",".join(row["allowed_ips"] or []),
        )
    Console().print(table)


@keys_app.command("revoke")
def keys_revoke(
    key_id: str = typer.Argument(..., help="The key id (key_…), as `keys list` shows it."),
    data_dir: Optional[Path] = DataDir,
    database_url: Optional[str] = DatabaseUrl,
) -> None:
    """Revoke a key; running servers stop accepting it within the key cache time (5 s by default)."""
    store = _store(_settings(data_dir, database_url))
    done = store.revoke_key(key_id, time.time())
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
    store = _store(_settings(data_dir, database_url))
    done = store.add_credits(account_id, amount, time.time(), note)
    balance = store.account(account_id) if done else None
    store.close()
    if not done:
        err.print(f"[red]error:[/red] no account {account_id!r}")
        raise typer.Exit(2)
    print(f"{account_id}: added {amount}; balance {balance['credits']} credits")


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

    store = _store(_settings(data_dir, database_url))
    codes = create_codes(store, credits, count, _expiry(expires))
    store.close()
    print("\n".join(codes))


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


def main() -> None:
    app()
