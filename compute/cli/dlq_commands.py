"""``rosetta dlq ...``: inspect and repair the DLQ, with the engine running or stopped.

The commands go through the engine's admin API when it runs (found via
``<DLQ_BASE_PATH>/admin.json``) or open the queue directories when it does
not, and say which on stderr. Every command takes ``--json`` for scripts.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from compute.cli.output import (
    clip_words,
    emit,
    emit_line,
    format_age,
    format_size,
    lag_cells,
    progress_bar,
    setup_logging,
    stdout_console,
    table,
)
from compute.errors import DestinationUnavailableError, NotFoundError, OperationError, UsageError
from compute.queue_id import QueueId

if TYPE_CHECKING:
    from compute.cli.client import DLQClient
    from config.settings import Settings


@click.group()
@click.pass_context
def dlq(ctx: click.Context) -> None:
    """Inspect and repair the DLQ (engine running or stopped)."""
    if ctx.obj["log_level"] is None:
        setup_logging("WARNING")


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
        raise UsageError(str(error)) from None


def _message_action(
    message_id: str, action: str, as_json: bool, line: Callable[[dict[str, Any]], str]
) -> None:
    """``discard``, ``park`` or ``unpark`` one message, and say what was done."""
    with _client() as client:
        result = client.message_action(message_id, action)
    emit_line(result, as_json, line)


@dlq.command()
@json_option
def queues(as_json: bool) -> None:
    """One row per queue: messages, parked, bytes, oldest age, destination health, HELD."""
    with _client() as client:
        rows = client.queues()

    def human(rows: list[dict[str, Any]]) -> None:
        damaged = [r for r in rows if r.get("damaged")]
        # Engines sharing pipelines (DLQ_BACKEND=jetstream): which one runs each queue's pipeline.
        shared = any("owner" in r for r in rows)
        columns: tuple[str, ...] = ("source", "table", "destination", "messages", "parked")
        columns += ("bytes", "oldest", "destination health", "held") + (("owner",) * shared)
        queues = table(
            f"DLQ queues ({len(rows) - len(damaged)})", columns, right=("messages", "parked")
        )
        held = [r for r in rows if r.get("held")]
        for r in rows:
            if r.get("damaged"):
                continue
            queues.add_row(
                r["source_id"],
                r["table"],
                r["destination_id"],
                str(r["messages"]),
                str(r["parked"]),
                format_size(r["bytes_on_disk"]),
                format_age(r["oldest_age_seconds"]),
                r["destination_health"],
                "HELD" if r.get("held") else "",
                *((r.get("owner") or "none",) if shared else ()),
            )
        stdout_console().print(queues)
        if held:
            holds = table(
                f"HELD queues: the target table refuses every change ({len(held)})",
                ("queue", "since", "retries", "cause"),
                text=("cause",),
            )
            for r in held:
                h = r["held"]
                code = f" [{h['code']}]" if h.get("code") else ""
                cause = f"{h['error_class']}{code}: {h['message']}"
                holds.add_row(r["queue"], h["since"], str(h["retries"]), clip_words(cause))
            stdout_console().print(holds)
        if damaged:
            aside = table(
                f"DAMAGED queue directories set aside ({len(damaged)})",
                ("queue", "moved to", "reason"),
                text=("reason",),
            )
            for r in damaged:
                aside.add_row(r["queue"], r["moved_to"], clip_words(r["reason"]))
            stdout_console().print(aside)

    emit(rows, as_json, human)


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
        shown = len(result["messages"])
        messages = table(
            f"{result['queue']} ({result['lane']} lane): {result['total']} message(s), "
            + (f"{result['superseded']} superseded, " if result.get("superseded") else "")
            + f"showing {shown}",
            ("id", "op", "key", "error", "attempts", "first failure", "last failure", "age"),
            text=("error",),
            right=("age",),
        )
        for m in result["messages"]:
            messages.add_row(
                m["message_id"],
                m["op"],
                json.dumps(m["key"], default=str)
                # Columns the source did not send (unchanged): the row keeps them.
                + (f" unchanged: {', '.join(m['unchanged'])}" if m.get("unchanged") else "")
                + _superseded_note(m.get("superseded_by_truncate")),
                clip_words(f"{m['error_class']}: {m['error_message']}"),
                str(m["attempts"]),
                m["first_failure_at"] or "-",
                m["last_failure_at"] or "-",
                format_age(m["age_seconds"]),
            )
        stdout_console().print(messages)

    emit(result, as_json, human)


def _superseded_note(truncate: dict[str, Any] | None) -> str:
    """A parked change older than an applied truncate: replaying it would undo the truncate."""
    if not truncate:
        return ""
    return f" SUPERSEDED by truncate at {truncate['position']} ({truncate['applied_at']})"


@dlq.command()
@json_option
def stats(as_json: bool) -> None:
    """Totals per destination and overall."""
    with _client() as client:
        result = client.stats()

    def human(result: dict[str, Any]) -> None:
        totals = table(
            "DLQ stats",
            ("destination", "messages", "parked", "oldest", "recovery", "last recovery"),
        )
        rows = [("all", result)] + list(result["destinations"].items())
        for name, entry in rows:
            totals.add_row(
                name,
                str(entry["total_messages"]),
                str(entry["parked_messages"]),
                format_age(entry["oldest_message_age_seconds"]),
                "on" if entry["recovery_enabled"] else "off",
                entry["last_recovery_attempt"] or "-",
            )
        stdout_console().print(totals)
        if result.get("sources"):
            stdout_console().print(source_table(result["sources"]))

    emit(result, as_json, human)


@dlq.command()
@click.argument("queue", required=False)
@click.option("--all", "all_queues", is_flag=True, help="every queue")
@click.option("--parked", is_flag=True, help="replay the parked lane (never done automatically)")
@click.option("--dry-run", is_flag=True, help="only say what would be replayed")
@json_option
def replay(queue: str | None, all_queues: bool, parked: bool, dry_run: bool, as_json: bool) -> None:
    """Replay QUEUE (or --all) now, in order."""
    if bool(queue) == all_queues:
        raise UsageError("name a QUEUE or give --all (not both)")
    queue_id = _queue(queue) if queue else None
    with _client() as client:
        result = client.replay(queue_id, parked, dry_run, progress_bar)

    def human(result: dict[str, Any]) -> None:
        verb = "would replay" if result["dry_run"] else "replayed"
        done = table(
            f"DLQ replay ({'dry run' if result['dry_run'] else 'done'})",
            ("queue", "lane", "messages", "replayed", "failed", "parked", "error"),
            text=("error",),
        )
        for r in result["queues"]:
            done.add_row(
                r["queue"],
                r["lane"],
                str(r["messages"]),
                str(r["replayed"]),
                str(r["failed"]),
                str(r["parked"]),
                clip_words(r["error"] or ""),
            )
        stdout_console().print(done)
        total = sum(r["messages"] for r in result["queues"])
        click.echo(
            f"{verb} {total if result['dry_run'] else result['replayed']} message(s); "
            f"not replayed {result['failed']} (still queued); parked {result['parked']}"
        )

    emit(result, as_json, human)
    if result["failed"]:
        raise replay_failure(result)


def source_table(sources: list[dict[str, Any]]) -> Any:
    """Each running pipeline's events, events/s and its source's replication lag."""
    flows = table(
        "Sources",
        ("pipeline", "source", "events", "events/s", "slot", "lag", "lag bytes", "wal status"),
        right=("events", "events/s", "lag", "lag bytes"),
    )
    for row in sources:
        slot, lag, lag_bytes, wal_status = lag_cells(row.get("replication_lag"))
        flows.add_row(
            row["pipeline"],
            str(row["source_id"]),
            str(row["events"]),
            f"{row['events_per_second'] or 0:.1f}",
            slot,
            lag,
            lag_bytes,
            clip_words(wal_status),
        )
    return flows


def replay_failure(result: dict[str, Any]) -> OperationError:
    """The one line a replay that left messages ends with, and its kind (its exit code).

    When every queue that failed waits for an unreachable destination, it is
    an outage: nothing is lost and the engine replays the messages once the
    destination is back (``DestinationUnavailableError``, its own exit code).
    When every queue that failed is held (its target table refuses every
    change), the line says so: nothing was parked and the fix is the table's.
    """
    failed = [r for r in result["queues"] if r["failed"]]
    down = [r for r in failed if r.get("destination_health") == "unhealthy"]
    queued = sum(r.get("remaining", r["failed"]) for r in failed)
    held = [r for r in failed if r.get("held")]
    if held and len(held) == len(failed):
        where = f"in {held[0]['queue']}" if len(held) == 1 else f"in {len(held)} queues"
        return OperationError(
            f"{queued} message(s) stay queued {where}, nothing was parked: the target table "
            "refuses every change (the table's error column says how); once it is fixed the "
            "engine replays them by itself (or run this replay again)"
        )
    if not down or len(down) < len(failed):
        return OperationError(
            f"replay failed for {result['failed']} message(s); {queued} stay queued "
            "(the table's error column says why)"
        )
    destinations = sorted({QueueId.parse(r["queue"]).destination_id for r in down})
    errors = sorted({_why(r["error"]) for r in down if r["error"]})
    who = (
        f"destination {destinations[0]} is"
        if len(destinations) == 1
        else f"destinations {', '.join(destinations)} are"
    )
    where = f"in {down[0]['queue']}" if len(down) == 1 else f"in {len(down)} queues"
    then = (
        "the engine's recovery worker replays them as soon as the destination is back"
        if result.get("mode") == "online"
        else "`rosetta run` replays them once the destination is back (or run this replay again)"
    )
    health = f" (unhealthy: {'; '.join(errors)})" if errors else " (unhealthy)"
    return DestinationUnavailableError(
        f"{who} unreachable{health}: {queued} message(s) stay queued {where}, nothing was "
        f"lost; {then}"
    )


def _why(error: str) -> str:
    prefix = "destination unhealthy: "
    return error[len(prefix) :] if error.startswith(prefix) else error


@dlq.command()
@click.argument("queue")
@click.option("--parked", is_flag=True, help="purge the parked lane instead")
@click.option("--confirm", is_flag=True, help="required: purge deletes messages for good")
@json_option
def purge(queue: str, parked: bool, confirm: bool, as_json: bool) -> None:
    """Delete every message of QUEUE (requires --confirm)."""
    queue_id = _queue(queue)
    if not confirm:
        raise UsageError(f"purge deletes every message of {queue_id} for good: add --confirm")
    with _client() as client:
        result = client.purge(queue_id, parked)
    emit_line(
        result,
        as_json,
        lambda r: f"purged {r['removed']} message(s) from {r['queue']} ({r['lane']} lane)",
    )


@dlq.command()
@click.argument("message_id")
@click.option("--confirm", is_flag=True, help="required: discard deletes the message for good")
@json_option
def discard(message_id: str, confirm: bool, as_json: bool) -> None:
    """Delete one message (by id) for good (requires --confirm)."""
    if not confirm:
        raise UsageError(f"discard deletes message {message_id} for good: add --confirm")
    _message_action(
        message_id,
        "discard",
        as_json,
        lambda r: (
            f"discarded {r['message_id']} from {r['queue']} ({', '.join(r['discarded_from'])})"
        ),
    )


@dlq.command()
@click.argument("message_id")
@json_option
def park(message_id: str, as_json: bool) -> None:
    """Set one message aside (its key is held behind it)."""
    _message_action(
        message_id, "park", as_json, lambda r: f"parked {r['message_id']} in {r['queue']}"
    )


@dlq.command()
@click.argument("message_id")
@json_option
def unpark(message_id: str, as_json: bool) -> None:
    """Send a parked message (and later parked changes to its key) back for replay."""
    _message_action(
        message_id,
        "unpark",
        as_json,
        lambda r: (
            f"unparked {r['message_id']} in {r['queue']}: moved {len(r['moved'])} "
            f"message(s) to the tail of the queue ({', '.join(r['moved'])})"
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
        result = client.export(queue_id, Path(out), parked, progress_bar)
    emit_line(
        result,
        as_json,
        lambda r: f"exported {r['exported']} message(s) of {r['queue']} to {r['file']}",
    )


@dlq.command("import")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--skip-existing", is_flag=True, help="skip ids already in the queue")
@json_option
def import_cmd(file: str, skip_existing: bool, as_json: bool) -> None:
    """Enqueue the messages of an export FILE.jsonl, in order, into its queue."""
    path = Path(file)
    if not path.is_file():
        raise NotFoundError(f"no such file: {file}")
    with _client() as client:
        result = client.import_file(path, skip_existing, progress_bar)
    emit_line(
        result,
        as_json,
        lambda r: (
            f"imported {r['imported']} message(s) into {r['queue']} ({r['lane']} lane); "
            f"skipped {r['skipped_existing']} already present"
        ),
    )
