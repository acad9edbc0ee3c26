"""How ``rosetta dlq`` reaches the queues: the running engine's admin API, or the directories.

``connect`` picks the mode:

1. ``<DLQ_BASE_PATH>/admin.json`` names a live pid and its API answers:
   online, over HTTP (token from ``ROSETTA_ADMIN_TOKEN``);
2. it names a live pid that does not answer, or another process holds the
   base path's lock: a one-line error naming the pid (exit 4);
3. otherwise (no engine): offline, opening the queue directories directly.

Both clients return the same JSON-able results (``DLQOperations`` computes
them in both modes).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from compute.admin.discovery import DISCOVERY_FILE, live_engine
from compute.admin.json_limits import MAX_BODY_DEPTH, MAX_LINE_DEPTH, loads
from compute.admin.replay_actions import replay_summary
from compute.admin.request import IMPORT_CONTENT_TYPE
from compute.codec.export_view import parse_header
from compute.error_codes import error_from_name
from compute.errors import (
    EngineUnreachableError,
    OperationError,
    QueueLockedError,
    QueueNotFoundError,
    UsageError,
)
from compute.queue_id import QueueId
from config.settings import Settings

ProgressFactory = Callable[[str, int | None], AbstractContextManager[Callable[[int], None]]]

PROBE_TIMEOUT = 5.0
REQUEST_TIMEOUT = 3600.0  # a replay of a large queue takes as long as it takes


class DLQClient(ABC):
    """The operations ``rosetta dlq`` needs, online or offline."""

    @abstractmethod
    def describe(self) -> str: ...

    @abstractmethod
    def queues(self) -> list[dict[str, Any]]: ...

    @abstractmethod
    def show(self, queue: QueueId, limit: int, parked: bool) -> dict[str, Any]: ...

    @abstractmethod
    def stats(self) -> dict[str, Any]: ...

    @abstractmethod
    def replay(
        self, queue: QueueId | None, parked: bool, dry_run: bool, progress: ProgressFactory
    ) -> dict[str, Any]: ...

    @abstractmethod
    def purge(self, queue: QueueId, parked: bool) -> dict[str, Any]: ...

    @abstractmethod
    def message_action(self, message_id: str, action: str) -> dict[str, Any]: ...

    @abstractmethod
    def export(
        self, queue: QueueId, path: Path, parked: bool, progress: ProgressFactory
    ) -> dict[str, Any]: ...

    @abstractmethod
    def import_file(
        self, path: Path, skip_existing: bool, progress: ProgressFactory
    ) -> dict[str, Any]: ...

    def close(self) -> None:
        return None


def connect(settings: Settings) -> DLQClient:
    """The client for the current situation (see the module docstring)."""
    base = Path(settings.dlq.base_path)
    engine = live_engine(base)
    if engine is not None:
        pid, url = engine
        client = HttpClient(url, settings.admin.token, pid)
        client.probe()
        return client
    if base.exists() and not base.is_dir():
        raise UsageError(
            f"DLQ_BASE_PATH={str(base)!r} is a file, not a directory: set DLQ_BASE_PATH to "
            "the engine's DLQ directory (the one `rosetta run` uses; default ./tmp/dlq)"
        )
    if not base.is_dir():
        raise QueueNotFoundError(
            f"DLQ directory {str(base)!r} does not exist (set DLQ_BASE_PATH to the engine's)"
        )
    from compute.admin.operations import DLQOperations
    from compute.dlq.manager import DLQManager

    try:
        manager = DLQManager(settings.dlq, background=False)
    except QueueLockedError as error:
        raise EngineUnreachableError(
            f"{error}; its admin API is off or unreachable (no live {DISCOVERY_FILE}): "
            "enable it with ROSETTA_ADMIN_ADDR, or stop the engine"
        ) from None
    return LocalClient(DLQOperations(manager, settings, mode="offline"), base)


def connect_online(settings: Settings) -> HttpClient:
    """The running engine's admin API; ``EngineUnreachableError`` saying why there is none."""
    base = Path(settings.dlq.base_path)
    engine = live_engine(base)
    if engine is None:
        if not base.is_dir():
            where = "is not a directory" if base.exists() else "does not exist"
            raise EngineUnreachableError(
                f"no running engine: DLQ directory {str(base)!r} {where} "
                "(set DLQ_BASE_PATH to the engine's)"
            )
        raise EngineUnreachableError(
            f"no running engine: {base / DISCOVERY_FILE} is missing or names a process that "
            "has ended; start it with `rosetta run` (admin API on: ROSETTA_ADMIN_ADDR not off) "
            "or set DLQ_BASE_PATH to its directory"
        )
    pid, url = engine
    client = HttpClient(url, settings.admin.token, pid)
    client.probe()
    return client


class LocalClient(DLQClient):
    """Engine stopped: the queue directories, opened directly."""

    def __init__(self, ops: Any, base: Path) -> None:
        self.ops = ops
        self.base = base

    def describe(self) -> str:
        return f"offline: engine not running, opened {self.base} directly"

    def queues(self) -> list[dict[str, Any]]:
        return list(self.ops.queues())

    def show(self, queue: QueueId, limit: int, parked: bool) -> dict[str, Any]:
        return dict(self.ops.show(queue, limit=limit, parked=parked))

    def stats(self) -> dict[str, Any]:
        return dict(self.ops.stats())

    def replay(
        self, queue: QueueId | None, parked: bool, dry_run: bool, progress: ProgressFactory
    ) -> dict[str, Any]:
        total = _waiting(self.queues(), queue, parked)
        with progress("replaying", total) as advance:
            return dict(self.ops.replay(queue, parked=parked, dry_run=dry_run, progress=advance))

    def purge(self, queue: QueueId, parked: bool) -> dict[str, Any]:
        return dict(self.ops.purge(queue, parked=parked))

    def message_action(self, message_id: str, action: str) -> dict[str, Any]:
        return dict(getattr(self.ops, action)(message_id))

    def export(
        self, queue: QueueId, path: Path, parked: bool, progress: ProgressFactory
    ) -> dict[str, Any]:
        total = self.ops.dlq.count(queue.parked if parked else queue)
        with progress("exporting", total) as advance:
            return dict(self.ops.export_to(queue, path, parked=parked, progress=advance))

    def import_file(
        self, path: Path, skip_existing: bool, progress: ProgressFactory
    ) -> dict[str, Any]:
        with progress("importing", None) as advance:
            return dict(self.ops.import_from(path, skip_existing=skip_existing, progress=advance))

    def close(self) -> None:
        self.ops.close()
        self.ops.dlq.close()


def _waiting(rows: list[dict[str, Any]], queue: QueueId | None, parked: bool) -> int:
    field = "parked" if parked else "messages"
    return sum(
        int(r[field])
        for r in rows
        if not r.get("damaged") and (queue is None or r["queue"] == str(queue))
    )


class HttpClient(DLQClient):
    """Engine running: its admin API over HTTP."""

    def __init__(self, url: str, token: str | None, pid: int) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.pid = pid

    def describe(self) -> str:
        return f"online: engine pid {self.pid}, admin API {self.url}"

    def probe(self) -> None:
        try:
            self._request("GET", "/dlq/stats", timeout=PROBE_TIMEOUT)
        except EngineUnreachableError:
            raise
        except OperationError as error:
            raise EngineUnreachableError(
                f"engine pid {self.pid} answers at {self.url} but refuses: {error}"
            ) from None

    def _open(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        data: Any = None,
        headers: dict[str, str] | None = None,
        timeout: float = REQUEST_TIMEOUT,
        accept: tuple[int, ...] = (),
    ) -> Any:
        all_headers = dict(headers or {})
        if self.token:
            all_headers["Authorization"] = f"Bearer {self.token}"
        if body is not None:
            data = json.dumps(body).encode()
            all_headers["Content-Type"] = "application/json"
        request = urllib.request.Request(
            self.url + path, data=data, method=method, headers=all_headers
        )
        try:
            return urllib.request.urlopen(request, timeout=timeout)
        except urllib.error.HTTPError as error:
            if error.code in accept:
                return error  # an answer the caller reads (GET /health is 503 when critical)
            name: object = None
            try:
                answer = loads(error.read(), MAX_BODY_DEPTH)
                message = answer.get("error", error.reason)
                name = answer.get("error_type")
            except (ValueError, AttributeError):
                message = str(error.reason)
            if error.code == 401:
                raise EngineUnreachableError(
                    f"engine pid {self.pid} at {self.url} refused the token: {message} "
                    "(set ROSETTA_ADMIN_TOKEN to the engine's)"
                ) from None
            raise error_from_name(name, str(message)) from None
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise EngineUnreachableError(
                f"engine pid {self.pid} is running but its admin API at {self.url} "
                f"does not answer: {reason}"
            ) from None

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        with self._open(method, path, **kwargs) as response:
            try:
                return loads(response.read(), MAX_LINE_DEPTH)
            except ValueError as error:
                raise OperationError(f"the engine sent a bad answer to {path}: {error}") from None

    def queues(self) -> list[dict[str, Any]]:
        return list(self._request("GET", "/dlq/queues")["queues"])

    def health(self, timeout: float = PROBE_TIMEOUT) -> dict[str, Any]:
        """``GET /health``'s body, whatever the engine's status (``critical`` is a 503)."""
        return dict(self._request("GET", "/health", timeout=timeout, accept=(503,)))

    def read_json(self, path: str, timeout: float = PROBE_TIMEOUT) -> Any:
        """A read-only route's JSON answer (``/dlq/queues``, ``/alerts``) within ``timeout``."""
        return self._request("GET", path, timeout=timeout)

    def read_text(self, path: str, timeout: float = PROBE_TIMEOUT) -> str:
        """A read-only route's text answer (``/metrics``) within ``timeout``."""
        with self._open("GET", path, timeout=timeout) as response:
            return str(response.read().decode("utf-8"))

    def show(self, queue: QueueId, limit: int, parked: bool) -> dict[str, Any]:
        query = urllib.parse.urlencode({"limit": limit, "parked": str(parked).lower()})
        return dict(self._request("GET", f"/dlq/queues/{_q(queue)}/messages?{query}"))

    def stats(self) -> dict[str, Any]:
        return dict(self._request("GET", "/dlq/stats"))

    def replay(
        self, queue: QueueId | None, parked: bool, dry_run: bool, progress: ProgressFactory
    ) -> dict[str, Any]:
        rows = [r for r in self.queues() if not r.get("damaged")]  # set aside: not replayable
        # Higher priority first (the engine's order of a recovery pass), then by name.
        ordered = sorted(rows, key=lambda r: -(r.get("priority") or 0))
        targets = [str(queue)] if queue is not None else [r["queue"] for r in ordered]
        total = _waiting(rows, queue, parked)
        results: list[dict[str, Any]] = []
        with progress("replaying", total) as advance:
            # One request per queue, so the bar moves and a failure names its queue.
            for target in targets:
                if queue is None and not _waiting(rows, QueueId.parse(target), parked):
                    continue
                body = {"queue": target, "parked": parked, "dry_run": dry_run}
                result = self._request("POST", "/dlq/reprocess", body=body)
                results.extend(result["queues"])
                advance(sum(r["replayed"] + r["parked"] for r in result["queues"]))
        return replay_summary(results, dry_run, "online")

    def purge(self, queue: QueueId, parked: bool) -> dict[str, Any]:
        body = {"queue": str(queue), "confirm": True, "parked": parked}
        return dict(self._request("POST", "/dlq/purge", body=body))

    def message_action(self, message_id: str, action: str) -> dict[str, Any]:
        body: dict[str, Any] = {"confirm": True} if action == "discard" else {}
        path = f"/dlq/messages/{urllib.parse.quote(message_id, safe='')}/{action}"
        return dict(self._request("POST", path, body=body))

    def export(
        self, queue: QueueId, path: Path, parked: bool, progress: ProgressFactory
    ) -> dict[str, Any]:
        query = urllib.parse.urlencode({"parked": str(parked).lower()})
        tmp = path.with_name(path.name + ".partial")
        written = 0
        with self._open("GET", f"/dlq/queues/{_q(queue)}/export?{query}") as response:
            lines = _lines(response)
            first = next(lines, b"")
            try:
                lane, expected = parse_header(loads(first, MAX_BODY_DEPTH))
            except ValueError as error:
                raise OperationError(f"the engine sent a bad export header: {error}") from None
            with progress("exporting", expected) as advance, tmp.open("wb") as out:
                out.write(first)
                for line in lines:
                    out.write(line)
                    written += 1
                    advance(1)
        if written != expected:
            tmp.unlink(missing_ok=True)
            raise OperationError(
                f"export of {queue} ended after {written} of {expected} message(s) "
                "(the engine log says why); nothing was written"
            )
        tmp.replace(path)
        return {
            "queue": str(lane.main),
            "lane": "parked" if lane.lane else "main",
            "exported": written,
            "file": str(path),
        }

    def import_file(
        self, path: Path, skip_existing: bool, progress: ProgressFactory
    ) -> dict[str, Any]:
        query = urllib.parse.urlencode({"skip_existing": str(skip_existing).lower()})
        size = path.stat().st_size
        with progress("importing", None), path.open("rb") as body:
            headers = {"Content-Type": IMPORT_CONTENT_TYPE, "Content-Length": str(size)}
            return dict(self._request("POST", f"/dlq/import?{query}", data=body, headers=headers))


def _q(queue: QueueId) -> str:
    return urllib.parse.quote(str(queue), safe="")


def _lines(response: Any) -> Iterator[bytes]:
    while True:
        line = response.readline()
        if not line:
            return
        yield line
