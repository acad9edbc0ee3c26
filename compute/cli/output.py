"""What the ``rosetta`` command writes: JSON or tables on stdout; progress and logs on stderr."""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import click

_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def setup_logging(level_name: str) -> None:
    level = getattr(logging, level_name.upper(), None)
    if not isinstance(level, int) or level_name.upper() not in _LEVELS:
        raise click.BadParameter(
            f"{level_name!r}: expected DEBUG, INFO, WARNING or ERROR", param_hint="--log-level"
        )
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s - %(message)s", stream=sys.stderr
    )


def emit(result: Any, as_json: bool, human: Callable[[Any], None]) -> None:
    """``result`` as JSON for scripts, or ``human(result)`` (tables, lines)."""
    if as_json:
        click.echo(json.dumps(result, indent=2, default=str))
    else:
        human(result)


def emit_line(result: Any, as_json: bool, line: Callable[[Any], str]) -> None:
    """``result`` as JSON for scripts, or the one line ``line(result)``."""
    emit(result, as_json, lambda r: click.echo(line(r)))


def stdout_console() -> Any:
    from rich.console import Console

    console = Console()
    if console.is_terminal:
        return console
    # Piped or captured: wide enough that ids and queue names fit on one line
    # (or as wide as COLUMNS says).
    columns = os.environ.get("COLUMNS", "")
    return Console(width=int(columns) if columns.isdigit() and int(columns) >= 40 else 200)


# Longer error texts are shortened in tables (at a word boundary); --json has them whole.
TABLE_TEXT_LIMIT = 300


def table(
    title: str, columns: Sequence[str], *, text: Collection[str] = (), right: Collection[str] = ()
) -> Any:
    """A rich table whose cells are never cut mid-word.

    Cells wrap between words; a word wider than its column goes on over the
    next lines whole (never ellipsized), so ids and queue names can be
    copied. ``text`` columns (errors, reasons) take the width left over.
    """
    from rich.table import Table

    result = Table(title=title)
    for name in columns:
        result.add_column(
            name,
            justify="right" if name in right else "left",
            overflow="fold",
            ratio=1 if name in text else None,
        )
    return result


def clip_words(text: str, limit: int = TABLE_TEXT_LIMIT) -> str:
    """``text``, or its words up to ``limit`` characters and `` …`` (cut between words;
    only a single word longer than ``limit`` is cut inside)."""
    if len(text) <= limit:
        return text
    cut = text.rfind(" ", 0, limit + 1)
    return (text[:cut] if cut > 0 else text[:limit]).rstrip() + " …"


@contextmanager
def progress_bar(description: str, total: int | None) -> Iterator[Callable[[int], None]]:
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


def format_size(n: int | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def format_age(seconds: float | None) -> str:
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


def lag_cells(lag: Mapping[str, Any] | None) -> list[str]:
    """A replicating source's slot, lag in time and in WAL bytes, and the slot's
    ``wal_status`` (``unknown: <why>`` when the lag could not be read); ``-`` for a
    source that does not replicate (no ``source_lag``)."""
    if not lag:
        return ["-", "-", "-", "-"]
    return [
        str(lag.get("slot") or "-"),
        format_age(lag.get("lag_seconds")),
        format_size(lag.get("lag_bytes")),
        str(lag.get("wal_status") or f"unknown: {lag.get('error')}"),
    ]
