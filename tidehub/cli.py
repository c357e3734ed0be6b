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
    data_dir: Optional[Path] = DataDir,
    database_url: Optional[str] = DatabaseUrl,
) -> None:
    """Create a key. The secret is printed once, alone on the last line."""
    from tidehub.core.auth import create_key

    store = _store(_settings(data_dir, database_url))
    try:
        key = create_key(store, name=name, account_id=account)
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
    table = Table("id", "account", "name", "prefix", "created", "revoked")
    for row in rows:
        table.add_row(
            row["id"], row["account_id"], row["name"], row["prefix"] + "…", _when(row["created_at"]),
            _when(row["revoked_at"]) if row["revoked_at"] else "",
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


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts))


def main() -> None:
    app()
