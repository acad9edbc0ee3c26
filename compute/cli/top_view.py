"""``rosetta top``'s screen: a snapshot (``top_sample.snapshot``) drawn as rich tables.

``render`` is a pure function of the snapshot: the same dictionary always
draws the same frame, so a test renders a fixed state and reads the text.
Long texts (errors, alert summaries) are shortened at a word boundary, never
mid-word; the worst queues come first and the rest are counted, not dropped
silently.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from compute.cli.output import format_age, format_size, lag_cells

STATE_STYLES = {
    "running": "green",
    "backpressure": "bold yellow",
    "failed": "bold red",
    "stopped": "dim",
}
HEALTH_STYLES = {
    "healthy": "green",
    "degraded": "yellow",
    "down": "bold red",
    "unknown": "dim",
}
# A slot's pg_replication_slots.wal_status; "unreserved" loses WAL at the next checkpoint.
# Anything else ("lost": the slot is unusable; "unknown: ...": the lag could not be read) is red.
WAL_STATUS_STYLES = {"reserved": "green", "extended": "yellow", "unreserved": "bold red"}
STATUS_STYLES = {"healthy": "bold green", "warning": "bold yellow", "critical": "bold red"}
SEVERITY_STYLES = {"critical": "bold red", "warning": "yellow"}
# right-aligned columns
NUMERIC = ("/s", "depth", "queued", "parked", "events", "rejected", "skipped", "lag", "lag bytes")
NARROWEST_TEXT = 20  # an error column never gets fewer characters than this


def render(
    snapshot: Mapping[str, Any],
    *,
    width: int = 120,
    max_queues: int | None = None,
    problem: str | None = None,
    interval: float | None = None,
) -> RenderableType:
    """One frame: header, alerts firing, pipelines, replicating sources (their slot's lag),
    destinations, queues (worst first).

    ``width`` is the screen's, to fit long texts; ``max_queues`` caps the
    queue rows (the rest are counted); ``problem`` is shown in red above
    everything (e.g. the engine stopped answering; the frame is the last one read).
    """
    parts: list[RenderableType] = [_header(snapshot, interval)]
    if problem:
        parts.append(Text(shorten(problem, width), style="bold red"))
    parts.append(_alerts(snapshot.get("alerts", []), width))
    parts.append(_pipelines(snapshot.get("pipelines", []), width))
    parts.extend(_sources(snapshot.get("pipelines", []), width))
    parts.append(_destinations(snapshot.get("destinations", []), width))
    parts.extend(_queues(snapshot.get("queues", []), max_queues, width))
    return Group(*parts)


def queue_rows(snapshot: Mapping[str, Any], height: int, problem: bool = False) -> int:
    """How many queue rows fit a screen of ``height`` lines under the other parts."""

    def table(rows: int) -> int:  # title, borders and heading around the rows
        return 5 + rows if rows else 1

    used = 2 + int(problem) + 5 + 1  # header, problem, the queue table's frame, "... more"
    used += sum(table(len(snapshot.get(part, []))) for part in ("alerts", "pipelines"))
    used += table(len(snapshot.get("destinations", [])))
    replicating = _replicating(snapshot.get("pipelines", []))
    used += table(len(replicating)) if replicating else 0  # no line at all when none
    return max(3, height - used)


def shorten(text: object, width: int) -> str:
    """``text`` on one line, at most ``width`` characters, cut at a word boundary with ``…``."""
    flat = " ".join(str(text or "").split())
    if len(flat) <= width:
        return flat
    cut = flat[: max(1, width - 1)]
    space = cut.rfind(" ")
    if space >= width // 2:  # a word boundary not too far back; else cut the long word
        cut = cut[:space]
    return cut.rstrip(" ,;:") + "…"


def rate(value: Any) -> str:
    """Events per second as a person reads them: ``-`` while unknown."""
    if value is None:
        return "-"
    number = float(value)
    if number == 0:
        return "0"
    return f"{number:.1f}" if number < 100 else f"{number:,.0f}"


def count(value: Any) -> str:
    return "-" if value is None else f"{int(value):,}"


def _header(snapshot: Mapping[str, Any], interval: float | None) -> RenderableType:
    engine = snapshot.get("engine", {})
    status = str(engine.get("status") or "unknown")
    line = Text()
    line.append("rosetta top", style="bold")
    line.append(f"  engine pid {engine.get('pid', '?')}  {engine.get('url', '?')}  ")
    line.append(status.upper(), style=STATUS_STYLES.get(status, ""))
    checked = _clock_time(engine.get("checked_at"))
    if checked:
        line.append(f"  {checked}")
    if interval:
        line.append(f"  every {interval:g}s, q quits", style="dim")
    queues = snapshot.get("queues", [])
    queued = sum(q.get("messages") or 0 for q in queues)
    parked = sum(q.get("parked") or 0 for q in queues)
    line.append(f"\nDLQ {queued:,} queued, {parked:,} parked, {len(queues)} queue(s)")
    disk = snapshot.get("disk", {})
    if disk.get("usage_percent") is not None:
        free = format_size(disk.get("free_bytes"))
        line.append(f"  disk {disk['usage_percent']:.1f}% used, {free} free")
    alerts = snapshot.get("alerts", [])
    line.append(f"  alerts firing: {len(alerts)}", style="bold red" if alerts else "")
    return line


Cell = str | Text


def _table(
    title: str, columns: tuple[str, ...], rows: list[list[Cell]], flexible: int, width: int
) -> Table:
    """A table that fits ``width``: column ``flexible`` (a name or an error) gets what the
    others leave, its texts shortened at a word boundary; the others are never cut."""
    others = sum(
        max([len(column)] + [len(row[i]) for row in rows])
        for i, column in enumerate(columns)
        if i != flexible
    )
    room = max(NARROWEST_TEXT, width - others - 3 * len(columns) - 1)
    table = Table(title=title, title_justify="left", title_style="bold")
    for i, column in enumerate(columns):
        numeric = i != flexible and column.endswith(NUMERIC)
        table.add_column(column, justify="right" if numeric else "left", no_wrap=True)
        if i != flexible:
            table.columns[i].min_width = max([len(column)] + [len(row[i]) for row in rows])
    for row in rows:
        cell = row[flexible]
        text = shorten(cell.plain if isinstance(cell, Text) else cell, room)
        style = cell.style if isinstance(cell, Text) else ""
        table.add_row(*row[:flexible], Text(text, style=style), *row[flexible + 1 :])
    return table


def _pipelines(rows: list[Mapping[str, Any]], width: int) -> RenderableType:
    if not rows:
        return Text("Pipelines: none running", style="dim")
    cells: list[list[Cell]] = [
        [
            str(p.get("name")),
            Text(str(p.get("state")), style=STATE_STYLES.get(str(p.get("state")), "")),
            rate(p.get("events_per_second")),
            count(p.get("events")),
            count(p.get("rejected_events")),
            count(p.get("skipped_events")),
            str(p.get("detail") or ""),
        ]
        for p in rows
    ]
    columns = ("pipeline", "state", "events/s", "events", "rejected", "skipped", "detail")
    return _table("Pipelines", columns, cells, 6, width)


def _replicating(pipelines: list[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The pipelines whose source replicates from a slot (a PostgreSQL source): they have a lag."""
    return [p for p in pipelines if p.get("source_lag")]


def _sources(pipelines: list[Mapping[str, Any]], width: int) -> list[RenderableType]:
    """Per replicating source: its slot's lag in time and in WAL bytes, and ``wal_status``
    (nothing at all when no source replicates: a JSON-lines source has no lag to show)."""
    rows = _replicating(pipelines)
    if not rows:
        return []
    cells: list[list[Cell]] = []
    for p in rows:
        slot, lag, lag_bytes, wal_status = lag_cells(p["source_lag"])
        cells.append(
            [
                str(p.get("name")),
                str(p.get("source_id") or "-"),
                slot,
                lag,
                lag_bytes,
                Text(wal_status, style=WAL_STATUS_STYLES.get(wal_status, "bold red")),
            ]
        )
    columns = ("pipeline", "source", "slot", "lag", "lag bytes", "wal status")
    return [_table("Sources (replication lag)", columns, cells, 5, width)]


def _destinations(rows: list[Mapping[str, Any]], width: int) -> RenderableType:
    if not rows:
        return Text("Destinations: none", style="dim")
    cells: list[list[Cell]] = []
    for d in rows:
        health = str(d.get("health"))
        since = _clock_time(d.get("since"))
        length = format_age(d.get("for_seconds"))
        cells.append(
            [
                str(d.get("pipeline")),
                f"{d.get('name')} ({d.get('id')})",
                Text(health, style=HEALTH_STYLES.get(health, "")),
                f"{since} ({length})" if since else length,
                count(d.get("messages")),
                count(d.get("parked")),
                str(d.get("last_error") or ""),
            ]
        )
    columns = ("pipeline", "destination", "health", "since", "queued", "parked", "last error")
    return _table("Destinations", columns, cells, 6, width)


def _queues(rows: list[Mapping[str, Any]], limit: int | None, width: int) -> list[RenderableType]:
    if not rows:
        return [Text("Queues: none on disk", style="dim")]
    ordered = sorted(
        rows,
        key=lambda q: (
            not q.get("damaged"),
            -((q.get("messages") or 0) + (q.get("parked") or 0)),
            -(q.get("oldest_age_seconds") or 0),
            str(q.get("queue")),
        ),
    )
    shown = ordered if limit is None else ordered[: max(1, limit)]
    cells: list[list[Cell]] = []
    for q in shown:
        if q.get("damaged"):
            cells.append([Text(str(q["queue"]), style="bold red"), "damaged", *[""] * 6])
            continue
        cells.append(
            [
                str(q.get("queue")),
                count(q.get("messages")),
                count(q.get("parked")),
                format_age(q.get("oldest_age_seconds")),
                format_size(q.get("bytes_on_disk")),
                rate(q.get("enqueue_per_second")),
                rate(q.get("replay_per_second")),
                rate(q.get("park_per_second")),
            ]
        )
    columns = ("queue", "depth", "parked", "oldest", "bytes", "in/s", "replay/s", "park/s")
    parts: list[RenderableType] = [_table("Queues", columns, cells, 0, width)]
    hidden = ordered[len(shown) :]
    if hidden:
        empty = sum(1 for q in hidden if not (q.get("messages") or q.get("parked")))
        parts.append(
            Text(f"... and {len(hidden)} more queue(s), {empty} of them empty", style="dim")
        )
    return parts


def _alerts(rows: list[Mapping[str, Any]], width: int) -> RenderableType:
    if not rows:
        return Text("Alerts: none firing", style="green")
    cells: list[list[Cell]] = [
        [
            Text(str(a.get("severity")), style=SEVERITY_STYLES.get(str(a.get("severity")), "")),
            str(a.get("alert")),
            str(a.get("subject")),
            format_age(a.get("for_seconds")),
            str(a.get("summary") or ""),
        ]
        for a in rows
    ]
    columns = ("severity", "alert", "subject", "for", "summary")
    return _table("Alerts firing", columns, cells, 4, width)


def _clock_time(text: object) -> str:
    """An ISO time from the engine as local ``HH:MM:SS`` ('' when absent)."""
    if not isinstance(text, str):
        return ""
    try:
        return time.strftime("%H:%M:%S", time.localtime(datetime.fromisoformat(text).timestamp()))
    except ValueError:
        return ""
