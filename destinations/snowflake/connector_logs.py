"""Keeps the Snowflake connector's own log lines and thread tracebacks out of the console.

During an outage the connector logs every failed HTTP attempt (its vendored
urllib3 at WARNING, ``Retrying (Retry(total=0 ...``), then the final failure
at ERROR with a full traceback, a dozen lines per failed write; and the timer
that cancels a statement past its timeout dies with a traceback of its own
when the server is gone. The engine already logs one WARNING per failed write
with its cause (``✗ Failed to write to destination ...``), so the connector's
lines are passed on at DEBUG, tracebacks included, under this module's logger,
and its INFO chatter (one ``Snowflake Connector for Python Version`` line per
login) is dropped.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from snowflake.connector.errors import Error

from config.redact import redact

logger = logging.getLogger(__name__)

_CONNECTOR_LOGGER = "snowflake.connector"
_setup_lock = threading.Lock()


class _ToDebug(logging.Handler):
    """Hands each connector record on as one DEBUG record, traceback kept, secrets masked."""

    def emit(self, record: logging.LogRecord) -> None:
        if not logger.isEnabledFor(logging.DEBUG):
            return
        try:
            text = redact(record.getMessage())
        except Exception:  # a record whose arguments do not format: keep its template
            text = str(record.msg)
        logger.debug(
            "connector %s %s: %s",
            record.levelname,
            record.name,
            text,
            exc_info=record.exc_info,
        )


def quiet_connector_logs() -> None:
    """Route the connector's records through DEBUG, once per process.

    Only when nobody configured the ``snowflake.connector`` logger before
    (no level, no handler but the connector's own ``NullHandler``): an
    application that did keeps its own choice.
    """
    with _setup_lock:
        connector = logging.getLogger(_CONNECTOR_LOGGER)
        configured = [h for h in connector.handlers if not isinstance(h, logging.NullHandler)]
        if configured or connector.level != logging.NOTSET:
            return
        # WARNING and above only: the connector's DEBUG and INFO lines cost a
        # formatted string per HTTP request even when nobody shows them.
        connector.setLevel(logging.WARNING)
        connector.addHandler(_ToDebug())
        connector.propagate = False


def quiet_error_handler(
    connection: Any, cursor: Any, error_class: type[Error], error_value: dict[str, Any]
) -> None:
    """The connection's ``errorhandler``: raises as the connector would, except in its timers.

    A statement past its timeout is cancelled by a timer thread of the
    connector; during an outage the cancel request fails too, and an
    exception raised there only ends the thread with a traceback on stderr.
    There it is logged at DEBUG instead (the statement itself fails on its own).
    """
    if isinstance(threading.current_thread(), threading.Timer):
        logger.debug(
            "connector background request failed: %s",
            redact(str(error_value.get("msg", error_class.__name__))),
        )
        return
    Error.default_errorhandler(connection, cursor, error_class, error_value)
