"""The ``rosetta`` command: ``rosetta run`` runs the engine, ``rosetta dlq ...`` operates the DLQ.

``rosetta dlq`` commands work with the engine running (they go through its
admin API, found via ``<DLQ_BASE_PATH>/admin.json``) or stopped (they open
the queue directories directly), and say which on stderr. Every command
takes ``--json`` for scripts. Exit codes are in ``EXIT_CODES``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from config.errors import ConfigError, RosettaError

if TYPE_CHECKING:
    from compute.cli.client import DLQClient
    from config.settings import Settings

# Exit codes (documented in the README).
EXIT_OK = 0
EXIT_FAILED = 1  # runtime error, a failed pipeline, or an operation that failed
EXIT_CONFIG = 2  # configuration or usage error
EXIT_NOT_FOUND = 3  # no such queue, message or DLQ directory
EXIT_UNREACHABLE = 4  # the engine holds the queues but its admin API does not answer
EXIT_CONFLICT = 5  # the operation contradicts the queue's state (e.g. ids already present)

EXIT_CODES = {
    EXIT_OK: "success",
    EXIT_FAILED: "runtime error, failed pipeline, or failed operation",
    EXIT_CONFIG: "configuration or usage error",
    EXIT_NOT_FOUND: "queue, message or DLQ directory not found",
    EXIT_UNREACHABLE: "engine running but its admin API unreachable",
    EXIT_CONFLICT: "conflict with the queue's state",
}

_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


class CliError(Exception):
    """A one-line error and the exit code it maps to."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def _setup_logging(level_name: str) -> None:
    level = getattr(logging, level_name.upper(), None)
    if not isinstance(level, int) or level_name.upper() not in _LEVELS:
        raise click.BadParameter(
            f"{level_name!r}: expected DEBUG, INFO, WARNING or ERROR", param_hint="--log-level"
        )
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s - %(message)s", stream=sys.stderr
    )


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--log-level",
    default=None,
    metavar="LEVEL",
    help="DEBUG, INFO, WARNING or ERROR (default: INFO for run, WARNING for dlq)",
)
@click.pass_context
def cli(ctx: click.Context, log_level: str | None) -> None:
    """Rosetta CDC engine."""
    ctx.ensure_object(dict)
    ctx.obj["log_level"] = log_level
    if log_level is not None:
        _setup_logging(log_level)


@cli.command()
@click.option("--pipelines", help="pipelines TOML file (overrides ROSETTA_PIPELINES_FILE)")
@click.pass_context
def run(ctx: click.Context, pipelines: str | None) -> None:
    """Run the engine in the foreground until SIGTERM/SIGINT."""
    if ctx.obj["log_level"] is None:
        _setup_logging("INFO")
    from compute.engine.engine import Engine, load_pipeline_specs
    from config.settings import load_settings, prepare_directory

    settings = load_settings()
    prepare_directory(settings.dlq.base_path, "DLQ_BASE_PATH")
    # Sources write their offsets there after the first batch: an unusable
    # directory must stop start-up, not the pipeline after its first write.
    prepare_directory(settings.state_path, "ROSETTA_STATE_PATH")
    if pipelines:
        from dataclasses import replace

        settings = replace(settings, pipelines_file=Path(pipelines))
    specs = load_pipeline_specs(settings)
    ctx.exit(Engine(settings, specs).run_forever())


# ---------------------------------------------------------------- rosetta dlq


@cli.group()
@click.pass_context
def dlq(ctx: click.Context) -> None:
    """Inspect and repair the DLQ (engine running or stopped)."""
    if ctx.obj["log_level"] is None:
        _setup_logging("WARNING")


json_option = click.option("--json", "as_json", is_flag=True, help="print JSON for scripts")


def _settings() -> Settings:
    from config.settings import load_settings

    return load_settings()


@contextmanager
def _client() -> Iterator[DLQClient]:
    from compute.cli.client import connect

    client = connect(_settings())
    click.echo(f"rosetta: {client.describe()}", err=True)
    try:
        yield client
    finally:
        client.close()


def _queue(text: str) -> Any:
    from compute.queue_id import QueueId

    try:
        return QueueId.parse(text)
    except ValueError as error:
        raise CliError(str(error), EXIT_CONFIG) from None


def _emit(result: Any, as_json: bool, human: Callable[[Any], None]) -> None:
    if as_json:
        click.echo(json.dumps(result, indent=2, default=str))
    else:
        human(result)


def _console() -> Any:
    from rich.console import Console

    console = Console()
    # Piped or captured: wide enough that ids and queue names are not cut.
    return console if console.is_terminal else Console(width=200)


@contextmanager
def _progress(description: str, total: int | None) -> Iterator[Callable[[int], None]]:
    """A progress bar on stderr (only on a terminal: stdout stays clean for --json)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    console = Console(stderr=True)
    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    ) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n: bar.advance(task, n)


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{seconds:.1f}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


@dlq.command()
@json_option
def queues(as_json: bool) -> None:
    """One row per queue: messages, parked, bytes, oldest age, destination health."""
    with _client() as client:
        rows = client.queues()

    def human(rows: list[dict[str, Any]]) -> None:
        from rich.table import Table

        damaged = [r for r in rows if r.get("damaged")]
        table = Table(title=f"DLQ queues ({len(rows) - len(damaged)})")
        for name in ("source", "table", "destination", "messages", "parked", "bytes", "oldest"):
            table.add_column(name, justify="right" if name in ("messages", "parked") else "left")
        table.add_column("destination health")
        for r in rows:
            if r.get("damaged"):
                continue
            table.add_row(
                r["source_id"],
                r["table"],
                r["destination_id"],
                str(r["messages"]),
                str(r["parked"]),
                _size(r["bytes_on_disk"]),
                _age(r["oldest_age_seconds"]),
                r["destination_health"],
            )
        _console().print(table)
        if damaged:
            aside = Table(title=f"DAMAGED queue directories set aside ({len(damaged)})")
            for name in ("queue", "moved to", "reason"):
                aside.add_column(name)
            for r in damaged:
                aside.add_row(r["queue"], r["moved_to"], r["reason"])
            _console().print(aside)

    _emit(rows, as_json, human)


@dlq.command()
@click.argument("queue")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 10_000))
@click.option("--parked", is_flag=True, help="show the parked lane")
@json_option
def show(queue: str, limit: int, parked: bool, as_json: bool) -> None:
    """Peek at messages of QUEUE (source_<id>/table_<name>/dest_<id>) without removing them."""
    queue_id = _queue(queue)
    with _client() as client:
        result = client.show(queue_id, limit, parked)

    def human(result: dict[str, Any]) -> None:
        from rich.table import Table

        shown = len(result["messages"])
        table = Table(
            title=f"{result['queue']} ({result['lane']} lane): {result['total']} message(s), "
            f"showing {shown}"
        )
        for name in ("id", "op", "key", "error", "attempts", "first failure", "last failure"):
            table.add_column(name)
        table.add_column("age", justify="right")
        for m in result["messages"]:
            table.add_row(
                m["message_id"],
                m["op"],
                json.dumps(m["key"], default=str),
                f"{m['error_class']}: {m['error_message']}",
                str(m["attempts"]),
                m["first_failure_at"] or "-",
                m["last_failure_at"] or "-",
                _age(m["age_seconds"]),
            )
        _console().print(table)

    _emit(result, as_json, human)


@dlq.command()
@json_option
def stats(as_json: bool) -> None:
    """Totals per destination and overall."""
    with _client() as client:
        result = client.stats()

    def human(result: dict[str, Any]) -> None:
        from rich.table import Table

        table = Table(title="DLQ stats")
        for name in ("destination", "messages", "parked", "oldest", "recovery", "last recovery"):
            table.add_column(name)
        rows = [("all", result)] + list(result["destinations"].items())
        for name, entry in rows:
            table.add_row(
                name,
                str(entry["total_messages"]),
                str(entry["parked_messages"]),
                _age(entry["oldest_message_age_seconds"]),
                "on" if entry["recovery_enabled"] else "off",
                entry["last_recovery_attempt"] or "-",
            )
        _console().print(table)

    _emit(result, as_json, human)


@dlq.command()
@click.argument("queue", required=False)
@click.option("--all", "all_queues", is_flag=True, help="every queue")
@click.option("--parked", is_flag=True, help="replay the parked lane (never done automatically)")
@click.option("--dry-run", is_flag=True, help="only say what would be replayed")
@json_option
def replay(queue: str | None, all_queues: bool, parked: bool, dry_run: bool, as_json: bool) -> None:
    """Replay QUEUE (or --all) now, in order."""
    if bool(queue) == all_queues:
        raise CliError("name a QUEUE or give --all (not both)", EXIT_CONFIG)
    queue_id = _queue(queue) if queue else None
    with _client() as client:
        result = client.replay(queue_id, parked, dry_run, _progress)

    def human(result: dict[str, Any]) -> None:
        from rich.table import Table

        verb = "would replay" if result["dry_run"] else "replayed"
        table = Table(title=f"DLQ replay ({'dry run' if result['dry_run'] else 'done'})")
        for name in ("queue", "lane", "messages", "replayed", "failed", "parked", "error"):
            table.add_column(name)
        for r in result["queues"]:
            table.add_row(
                r["queue"],
                r["lane"],
                str(r["messages"]),
                str(r["replayed"]),
                str(r["failed"]),
                str(r["parked"]),
                r["error"] or "",
            )
        _console().print(table)
        total = sum(r["messages"] for r in result["queues"])
        click.echo(
            f"{verb} {total if result['dry_run'] else result['replayed']} message(s); "
            f"failed {result['failed']}; parked {result['parked']}"
        )

    _emit(result, as_json, human)
    if result["failed"]:
        raise CliError(f"replay failed for {result['failed']} message(s)", EXIT_FAILED)


@dlq.command()
@click.argument("queue")
@click.option("--parked", is_flag=True, help="purge the parked lane instead")
@click.option("--confirm", is_flag=True, help="required: purge deletes messages for good")
@json_option
def purge(queue: str, parked: bool, confirm: bool, as_json: bool) -> None:
    """Delete every message of QUEUE (requires --confirm)."""
    queue_id = _queue(queue)
    if not confirm:
        raise CliError(
            f"purge deletes every message of {queue_id} for good: add --confirm", EXIT_CONFIG
        )
    with _client() as client:
        result = client.purge(queue_id, parked)
    _emit(
        result,
        as_json,
        lambda r: click.echo(
            f"purged {r['removed']} message(s) from {r['queue']} ({r['lane']} lane)"
        ),
    )


@dlq.command()
@click.argument("message_id")
@click.option("--confirm", is_flag=True, help="required: discard deletes the message for good")
@json_option
def discard(message_id: str, confirm: bool, as_json: bool) -> None:
    """Delete one message (by id) for good (requires --confirm)."""
    if not confirm:
        raise CliError(f"discard deletes message {message_id} for good: add --confirm", EXIT_CONFIG)
    with _client() as client:
        result = client.message_action(message_id, "discard")
    _emit(
        result,
        as_json,
        lambda r: click.echo(
            f"discarded {r['message_id']} from {r['queue']} ({', '.join(r['discarded_from'])})"
        ),
    )


@dlq.command()
@click.argument("message_id")
@json_option
def park(message_id: str, as_json: bool) -> None:
    """Set one message aside (its key is held behind it)."""
    with _client() as client:
        result = client.message_action(message_id, "park")
    _emit(result, as_json, lambda r: click.echo(f"parked {r['message_id']} in {r['queue']}"))


@dlq.command()
@click.argument("message_id")
@json_option
def unpark(message_id: str, as_json: bool) -> None:
    """Send a parked message (and later parked changes to its key) back for replay."""
    with _client() as client:
        result = client.message_action(message_id, "unpark")
    _emit(
        result,
        as_json,
        lambda r: click.echo(
            f"unparked {r['message_id']} in {r['queue']}: moved {len(r['moved'])} message(s) "
            f"to the tail of the queue ({', '.join(r['moved'])})"
        ),
    )


@dlq.command("export")
@click.argument("queue")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False), help="FILE.jsonl")
@click.option("--parked", is_flag=True, help="export the parked lane")
@json_option
def export_cmd(queue: str, out: str, parked: bool, as_json: bool) -> None:
    """Write QUEUE's messages to a JSONL file (lossless; see `import`)."""
    queue_id = _queue(queue)
    with _client() as client:
        result = client.export(queue_id, Path(out), parked, _progress)
    _emit(
        result,
        as_json,
        lambda r: click.echo(f"exported {r['exported']} message(s) of {r['queue']} to {r['file']}"),
    )


@dlq.command("import")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--skip-existing", is_flag=True, help="skip ids already in the queue")
@json_option
def import_cmd(file: str, skip_existing: bool, as_json: bool) -> None:
    """Enqueue the messages of an export FILE.jsonl, in order, into its queue."""
    path = Path(file)
    if not path.is_file():
        raise CliError(f"no such file: {file}", EXIT_NOT_FOUND)
    with _client() as client:
        result = client.import_file(path, skip_existing, _progress)
    _emit(
        result,
        as_json,
        lambda r: click.echo(
            f"imported {r['imported']} message(s) into {r['queue']} ({r['lane']} lane); "
            f"skipped {r['skipped_existing']} already present"
        ),
    )


# ---------------------------------------------------------------- entry point


def main(argv: list[str] | None = None) -> int:
    from compute.errors import DLQConflictError, EngineUnreachableError, NotFoundError

    try:
        # Without standalone mode click returns ctx.exit()'s code instead of exiting.
        code = cli.main(args=argv, prog_name="rosetta", standalone_mode=False)
        if isinstance(code, int):
            return code
    except click.exceptions.Exit as done:
        return int(done.exit_code)
    except click.Abort:
        click.echo("rosetta: aborted", err=True)
        return EXIT_FAILED
    except click.ClickException as error:
        error.show()
        return EXIT_CONFIG
    except CliError as error:
        click.echo(f"rosetta: {error}", err=True)
        return error.code
    except EngineUnreachableError as error:
        click.echo(f"rosetta: {error}", err=True)
        return EXIT_UNREACHABLE
    except NotFoundError as error:
        click.echo(f"rosetta: {error}", err=True)
        return EXIT_NOT_FOUND
    except DLQConflictError as error:
        click.echo(f"rosetta: {error}", err=True)
        return EXIT_CONFLICT
    except RosettaError as error:
        click.echo(f"rosetta: {error}", err=True)
        return EXIT_CONFIG if isinstance(error, ConfigError) else EXIT_FAILED
    except KeyboardInterrupt:
        click.echo("rosetta: interrupted", err=True)
        return EXIT_FAILED
    except BrokenPipeError:
        # stdout closed early (e.g. piped into head): not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
