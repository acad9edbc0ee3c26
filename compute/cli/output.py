"""What the ``rosetta`` command writes: JSON or tables on stdout; progress and logs on stderr."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Iterator
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
    # Piped or captured: wide enough that ids and queue names are not cut.
    return console if console.is_terminal else Console(width=200)


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
