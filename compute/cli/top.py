"""``rosetta top``: the running engine on one live screen, refreshed every second; ``q`` quits.

It reads the engine's admin API only (found via ``<DLQ_BASE_PATH>/admin.json``,
token from ``ROSETTA_ADMIN_TOKEN``): with no engine running, or its API off,
unreachable or refusing the token, it says why in one line and exits 4
(``EngineUnreachableError``). ``--once`` prints one frame (two samples
``--interval`` apart, so the rates are real) and exits: for scripts and
pipes; ``--once --json`` prints the snapshot itself. Keys are read without
blocking, in cbreak mode; the terminal is restored however the loop ends
(``q``, Ctrl-C, an error).
"""

from __future__ import annotations

import json
import math
import os
import select
import sys
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import click

from compute.cli.output import setup_logging
from compute.errors import EngineUnreachableError, UsageError
from config.errors import RosettaError

if TYPE_CHECKING:
    from compute.cli.top_sample import Sampler

INTERVAL_RANGE = (0.1, 3600.0)
QUIT_KEYS = {"q", "Q"}


@click.command()
@click.option(
    "--interval",
    default="1",
    metavar="SECONDS",
    help="seconds between refreshes (0.1 to 3600, default 1)",
)
@click.option("--once", is_flag=True, help="print one frame and exit (for scripts and pipes)")
@click.option("--json", "as_json", is_flag=True, help="with --once: print the snapshot as JSON")
@click.pass_context
def top(ctx: click.Context, interval: str, once: bool, as_json: bool) -> None:
    """A live view of pipelines, destinations, queues and alerts (q quits)."""
    if ctx.obj["log_level"] is None:
        setup_logging("WARNING")
    seconds = parse_interval(interval)
    if as_json and not once:
        raise UsageError("--json needs --once (the live view is for a terminal)")
    from compute.cli.output import stdout_console

    console = stdout_console()
    if not once and not console.is_terminal:
        raise UsageError(
            "stdout is not a terminal: `rosetta top` draws a live screen; "
            "use `rosetta top --once` for one frame"
        )
    sampler = _sampler()
    if once:
        print_once(sampler, seconds, console, as_json)
        return
    try:
        run_live(sampler, seconds, console)
    except KeyboardInterrupt:
        pass  # Ctrl-C is a way to quit, like q


def parse_interval(text: str) -> float:
    """``--interval``: seconds within ``INTERVAL_RANGE``, one clear line otherwise."""
    low, high = INTERVAL_RANGE
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not low <= value <= high:
        raise UsageError(f"--interval {text!r}: expected seconds from {low:g} to {high:g}")
    return value


def _sampler() -> Sampler:
    from compute.cli.client import connect_online
    from compute.cli.top_sample import Sampler
    from config.settings import load_settings

    return Sampler(connect_online(load_settings()))


def print_once(sampler: Sampler, interval: float, console: Any, as_json: bool) -> None:
    """One frame (or the snapshot as JSON) from two samples ``interval`` apart."""
    from compute.cli.top_view import render

    sampler.sample()
    threading.Event().wait(interval)  # the time the rates are measured over
    snapshot = sampler.sample()
    if as_json:
        click.echo(json.dumps(snapshot, indent=2))
    else:
        console.print(render(snapshot, width=console.width))


def run_live(sampler: Sampler, interval: float, console: Any) -> None:
    """Refresh every ``interval`` until ``q``; the engine lost is shown, and found again."""
    from rich.live import Live

    from compute.cli.top_view import queue_rows, render

    snapshot: dict[str, Any] = {}
    with Keys() as keys, Live(console=console, screen=True, auto_refresh=False) as live:
        while True:
            problem = None
            try:
                snapshot = sampler.sample()
            except EngineUnreachableError as error:
                problem = f"{error} (retrying every {interval:g}s)"
                sampler = _reconnect(sampler)
            except RosettaError as error:  # an answer it could not read: say so, go on
                problem = f"{error} (retrying every {interval:g}s)"
            rows = queue_rows(snapshot, console.height, problem is not None)
            frame = render(
                snapshot, width=console.width, max_queues=rows, problem=problem, interval=interval
            )
            live.update(frame, refresh=True)
            if keys.wait_for(QUIT_KEYS, interval):
                return


def _reconnect(sampler: Sampler) -> Sampler:
    """After the engine stopped answering: the engine admin.json names now, if any
    (a restarted engine has a new pid and maybe a new port)."""
    try:
        return _sampler()
    except EngineUnreachableError:
        return sampler


class Keys:
    """Keys pressed while ``top`` runs, read without blocking (cbreak mode: no echo, no
    Enter needed, Ctrl-C still interrupts); the terminal's mode is restored on exit."""

    def __init__(self, stream: Any = None) -> None:
        self.stream = sys.stdin if stream is None else stream
        self._fd: int | None = None
        self._saved: Any = None

    def __enter__(self) -> Keys:
        try:
            fd = self.stream.fileno()
        except (AttributeError, OSError, ValueError):
            return self  # no stdin (a service, a test): refresh only
        if os.isatty(fd):
            import termios
            import tty

            self._saved = termios.tcgetattr(fd)
            tty.setcbreak(fd)
            self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            import termios

            termios.tcsetattr(self._fd, termios.TCSADRAIN, self._saved)
            self._fd = None

    def wait_for(self, wanted: set[str], seconds: float) -> bool:
        """Wait up to ``seconds``; True as soon as one of ``wanted`` is pressed."""
        deadline = time.monotonic() + seconds
        for key in self._keys(deadline):
            if key in wanted:
                return True
        return False

    def _keys(self, deadline: float) -> Iterator[str]:
        while (left := deadline - time.monotonic()) > 0:
            if self._fd is None:
                threading.Event().wait(left)
                return
            ready, _, _ = select.select([self._fd], [], [], left)
            if ready:
                data = os.read(self._fd, 64)
                if not data:  # the terminal went away: no more keys, refresh only
                    self._fd = None
                    continue
                yield from data.decode(errors="ignore")
