"""A source of Debezium change events, one per line, from a file or stdin.

The format of a line, and the checks it must pass, are ``jsonl_event``'s. The
seq of an event that gives none is its order among the consecutive events of
the same commit. Without ``lsn_commit``, ``lsn`` is only a correct commit
position when transactions do not interleave; a commit going backwards is
logged once as a warning.

Tombstones (a ``null`` value: Kafka's marker after a delete, for compaction)
carry no change: they are skipped, logged at DEBUG and counted
(``skipped_count``). Malformed lines are set aside, never crashed on: logged with line number and
reason, kept in ``rejected`` (the last ``max_rejected``) and appended to
``rejected_path`` when given. Their bytes count as read, so a restart does not
report them again unless they are past the acknowledged token.

Resume (files only): the token is the byte offset after the last line of the
batch (plus the line number and the implicit-sequence state, so line numbers
and implicit seqs stay identical after a restart); ``acknowledge`` stores it in
the ``OffsetStore`` and a new source seeks there. With ``follow=True`` the file
is polled for appended lines and an incomplete last line (no newline yet) is
left until it is complete; with ``follow=False`` the source is exhausted at
end of file, and a last line without a newline counts as complete.

Stdin (``"-"``) or any binary stream: read by a helper thread, never resumed
(``acknowledge`` stores nothing: a pipe cannot be re-read), exhausted at EOF.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import sys
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, NamedTuple

from compute.sources.base import RejectedEvent, Source, SourceBatch, SourceError
from compute.sources.debezium import DEFAULT_PLACEHOLDERS
from compute.sources.jsonl_event import (
    EventRejected,
    column_list,
    decode_line,
    parse_event,
)
from compute.sources.jsonl_message import Message, is_tombstone, split_message
from compute.sources.offset_store import OffsetStore
from destinations.records import ChangeRecord, SourcePosition

logger = logging.getLogger(__name__)

STDIN = "-"
_BOM = b"\xef\xbb\xbf"
_RAW_KEPT_CHARS = 4096  # raw text kept in memory per rejected line; the file gets all of it
_LOG_EACH_FIRST = 100  # rejections logged one by one; after that one in _LOG_EVERY
_LOG_EVERY = 1000
_EXTRA_LINES_PER_READ = 1024  # rejected lines a read may skip beyond max_events
_STREAM_QUEUE_LINES = 10_000


class _Token(NamedTuple):
    offset: int
    line: int | None  # None: count it from the file
    tx_commit: int | None
    tx_count: int

    def __str__(self) -> str:
        if self.line is None:
            return str(self.offset)  # as stored: the file has not been opened yet
        commit = "" if self.tx_commit is None else str(self.tx_commit)
        return f"{self.offset}:{self.line}:{commit}:{self.tx_count}"


def _parse_token(token: str) -> _Token:
    """``'1234'`` or ``'1234:17:5000:2'`` (offset, line, commit, count in commit)."""
    try:
        parts = token.split(":")
        if len(parts) == 1:
            offset = int(parts[0])
            if offset < 0:
                raise ValueError
            return _Token(offset, None, None, 0)
        offset_text, line_text, commit_text, count_text = parts
        parsed = _Token(
            int(offset_text),
            int(line_text),
            int(commit_text) if commit_text else None,
            int(count_text),
        )
    except ValueError:
        raise SourceError(f"not a JSON-lines resume token: {token!r}") from None
    if parsed.offset < 0 or (parsed.line or 0) < 0 or parsed.tx_count < 0:
        raise SourceError(f"not a JSON-lines resume token: {token!r}")
    return parsed


class _Line(NamedTuple):
    data: bytes
    too_long: bool


class JsonLinesSource(Source):
    """Debezium change events from a JSON-lines file (resumable) or stdin (not)."""

    def __init__(
        self,
        source_id: str,
        path_or_stdin: str | os.PathLike[str] | IO[bytes],
        offsets: OffsetStore | None,
        *,
        follow: bool = False,
        primary_keys: Mapping[str, Sequence[str]] | None = None,
        rejected_path: str | os.PathLike[str] | None = None,
        max_rejected: int = 1000,
        max_line_bytes: int = 16 * 1024 * 1024,
        unavailable_value_placeholder: str | Sequence[str] = DEFAULT_PLACEHOLDERS,
        append_only: Sequence[str] = (),
    ) -> None:
        super().__init__(source_id)
        if max_line_bytes < 1:
            raise ValueError("max_line_bytes must be positive")
        self._follow = follow
        self._offsets = offsets
        self._primary_keys = {t: column_list(cols) for t, cols in (primary_keys or {}).items()}
        for table in append_only:  # no key: its changes are applied as new rows
            self._primary_keys.setdefault(table, ())
        # Debezium's ``unavailable.value.placeholder``: a column holding it is left
        # out of the change (an unchanged TOASTed value), so the destination keeps it.
        placeholder = unavailable_value_placeholder
        self._placeholders = (placeholder,) if isinstance(placeholder, str) else tuple(placeholder)
        if not self._placeholders or not all(isinstance(p, str) and p for p in self._placeholders):
            raise ValueError("unavailable_value_placeholder must be a non-empty string")
        self._rejected_path = Path(rejected_path) if rejected_path is not None else None
        self._rejected: deque[RejectedEvent] = deque(maxlen=max(0, max_rejected))
        self._rejected_total = 0  # all of them; _rejected keeps the last max_rejected
        self._tombstones = 0
        self._max_line = max_line_bytes
        self._warned_backwards = False
        self._closed = False

        self._fh: IO[bytes] | None = None
        self._path: Path | None = None
        self._stream_lines: queue.Queue[_Line | BaseException | None] | None = None
        self._stream_eof = False
        self._state = _Token(0, 0, None, 0)

        if isinstance(path_or_stdin, str | os.PathLike) and os.fspath(path_or_stdin) != STDIN:
            self._path = Path(path_or_stdin)
            self.name = self._path.name
            stored = offsets.get(self.source_id) if offsets is not None else None
            self._start = _parse_token(stored) if stored is not None else _Token(0, 0, None, 0)
            self._state = self._start  # until the file is open, its token is the stored one
            if not self._open() and not follow:
                raise SourceError(f"source={self.source_id}: input file {self._path} not found")
        else:
            stream = sys.stdin.buffer if not hasattr(path_or_stdin, "read") else path_or_stdin
            self.name = (
                "stdin" if stream is sys.stdin.buffer else f"stream {getattr(stream, 'name', '?')}"
            )
            self._start_stream(stream)  # type: ignore[arg-type]

    # --- Source ----------------------------------------------------------------------------------

    def declared_tables(self) -> Sequence[str]:
        return tuple(self._primary_keys)

    def key_columns(self, table: str) -> tuple[str, ...] | None:
        bare = table.rpartition(".")[2]
        return self._primary_keys.get(table, self._primary_keys.get(bare))

    def read(self, max_events: int) -> SourceBatch:
        if max_events < 1:
            raise ValueError("max_events must be at least 1")
        if self._closed:
            raise SourceError(f"source={self.source_id}: read after close")
        records: list[ChangeRecord] = []
        if self._path is not None and self._fh is None and not self._open():
            return SourceBatch(records, str(self._state))  # follow: the file is not there yet
        if self._follow and self._fh is not None:
            size = os.fstat(self._fh.fileno()).st_size
            if size < self._state.offset:
                raise SourceError(
                    f"source={self.source_id} file={self._path}: file shrank to {size} bytes, "
                    f"below the read position {self._state.offset}; it was truncated or replaced"
                )
        for _ in range(max_events + _EXTRA_LINES_PER_READ):
            if len(records) >= max_events:
                break
            start = self._state.offset
            line = self._next_line()
            if line is None:
                break
            record = self._accept(line, start)
            if record is not None:
                records.append(record)
        return SourceBatch(records, str(self._state))

    def acknowledge(self, resume_token: str) -> None:
        token = _parse_token(resume_token)
        if self._path is None or self._offsets is None:
            return  # a stream cannot be re-read, so there is nothing to resume from
        if token.offset > self._state.offset:
            raise SourceError(
                f"source={self.source_id}: acknowledged offset {token.offset} is past what was "
                f"read ({self._state.offset})"
            )
        self._offsets.put(self.source_id, resume_token)

    @property
    def exhausted(self) -> bool:
        if self._path is None:
            assert self._stream_lines is not None
            return self._stream_eof and self._stream_lines.empty()
        if self._follow or self._fh is None:
            return False
        return self._state.offset >= os.fstat(self._fh.fileno()).st_size

    @property
    def rejected(self) -> Sequence[RejectedEvent]:
        return tuple(self._rejected)

    @property
    def rejected_count(self) -> int:
        return self._rejected_total

    @property
    def skipped_count(self) -> int:
        return self._tombstones

    def close(self) -> None:
        self._closed = True
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        # A stream's reader thread is a daemon blocked in read(); stdin is not ours to close.

    # --- files -----------------------------------------------------------------------------------

    def _open(self) -> bool:
        """Open the file and seek to the stored token; False if it does not exist (yet)."""
        assert self._path is not None
        try:
            fh = open(self._path, "rb")  # noqa: SIM115 - kept open for the source's lifetime
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise SourceError(f"source={self.source_id}: cannot open {self._path}: {exc}") from exc
        try:
            self._state = self._resume(fh, self._start)
        except BaseException:
            fh.close()
            raise
        self._fh = fh
        if self._start.offset:
            logger.info(
                "resuming source=%s file=%s offset=%d line=%d",
                self.source_id,
                self._path,
                self._state.offset,
                self._state.line or 0,
            )
        return True

    def _resume(self, fh: IO[bytes], token: _Token) -> _Token:
        """Seek to ``token``, checking the file still holds what was read before."""
        size = os.fstat(fh.fileno()).st_size
        where = f"source={self.source_id} file={self._path}"
        if token.offset > size:
            raise SourceError(
                f"{where}: resume offset {token.offset} is past the end of the file ({size} "
                "bytes); was it truncated or replaced? Remove the source's offset to re-read it."
            )
        if 0 < token.offset < size:
            fh.seek(token.offset - 1)
            if fh.read(1) != b"\n":
                raise SourceError(
                    f"{where}: resume offset {token.offset} is not at a line boundary; "
                    "was the file rewritten?"
                )
        line = token.line
        if line is None:  # an offset-only token: count the lines before it
            fh.seek(0)
            line, remaining = 0, token.offset
            while remaining:
                chunk = fh.read(min(remaining, 1 << 20))
                if not chunk:
                    break
                line += chunk.count(b"\n")
                remaining -= len(chunk)
        fh.seek(token.offset)
        return token._replace(line=line)

    def _next_line(self) -> _Line | None:
        """The next complete line (its bytes consumed), or None if there is none yet."""
        if self._path is None:
            return self._next_stream_line()
        fh = self._fh
        assert fh is not None
        start = self._state.offset
        data = fh.readline(self._max_line + 1)
        too_long = False
        if not data:
            return None
        if not data.endswith(b"\n") and len(data) > self._max_line:
            too_long = True  # skip the rest of it, keep the head for the report
            while True:
                rest = fh.readline(1 << 20)
                if not rest or rest.endswith(b"\n"):
                    break
            if not rest and self._follow:
                fh.seek(start)
                return None
        elif not data.endswith(b"\n") and self._follow:
            fh.seek(start)  # a writer is still appending to this line
            return None
        end = fh.tell()
        self._state = self._state._replace(offset=end, line=(self._state.line or 0) + 1)
        return _Line(data, too_long)

    # --- streams ---------------------------------------------------------------------------------

    def _start_stream(self, stream: IO[bytes]) -> None:
        lines: queue.Queue[_Line | BaseException | None] = queue.Queue(_STREAM_QUEUE_LINES)
        self._stream_lines = lines
        limit = self._max_line

        def pump() -> None:
            # Blocking reads live in this thread so that read() never waits on the pipe.
            try:
                while True:
                    data = stream.readline(limit + 1)
                    if not data:
                        break
                    too_long = not data.endswith(b"\n") and len(data) > limit
                    if too_long:
                        while True:
                            rest = stream.readline(1 << 20)
                            if not rest or rest.endswith(b"\n"):
                                break
                    lines.put(_Line(data, too_long))
            except BaseException as exc:  # handed to read(), which raises SourceError
                lines.put(exc)
            lines.put(None)

        threading.Thread(target=pump, name=f"jsonl-{self.source_id}", daemon=True).start()

    def _next_stream_line(self) -> _Line | None:
        assert self._stream_lines is not None
        if self._stream_eof:
            return None
        try:
            item = self._stream_lines.get_nowait()
        except queue.Empty:
            return None
        if item is None:
            self._stream_eof = True
            return None
        if isinstance(item, BaseException):
            self._stream_eof = True
            raise SourceError(f"source={self.source_id}: cannot read {self.name}: {item}") from item
        self._state = self._state._replace(
            offset=self._state.offset + len(item.data), line=(self._state.line or 0) + 1
        )
        return item

    # --- parsing ---------------------------------------------------------------------------------

    def _accept(self, line: _Line, start: int) -> ChangeRecord | None:
        """The line's change record, or None if it is blank or rejected (and reported)."""
        line_no = self._state.line or 0
        data = line.data
        if start == 0 and data.startswith(_BOM):
            data = data[len(_BOM) :]
        try:
            if line.too_long:
                raise EventRejected(f"line longer than {self._max_line} bytes")
            text = decode_line(data)
            if not text.strip():
                # Carries nothing; but ``kcat -f '%s\n'`` prints a tombstone (a null
                # value) as an empty line: counted, so it does not pass without a trace.
                self._skip(line_no, "empty line")
                return None
            message = split_message(text)
            if is_tombstone(message.value):
                self._skip(line_no, "tombstone")
                return None
            return self._record(message, line_no)
        except EventRejected as exc:
            self._reject(line_no, start, str(exc), line.data)
        except Exception as exc:  # a bug here must not stop the stream; it is reported loudly
            logger.exception("unexpected error parsing source=%s line=%d", self.source_id, line_no)
            self._reject(line_no, start, f"unexpected {type(exc).__name__}: {exc}", line.data)
        return None

    def _record(self, message: Message, line_no: int) -> ChangeRecord:
        event = parse_event(
            message.value,
            self._primary_keys,
            message.key,
            key_fields=message.key_fields,
            placeholders=self._placeholders,
            topic=message.topic,
        )
        commit = event.commit
        state = self._state
        if commit == state.tx_commit:
            count = state.tx_count + 1
        else:
            if state.tx_commit is not None and commit < state.tx_commit:
                self._warn_backwards(line_no, commit, state.tx_commit)
            count = 0
        self._state = state._replace(tx_commit=commit, tx_count=count)
        seq = event.seq if event.seq is not None else count
        return ChangeRecord(
            table=event.table,
            op=event.op,
            key=event.key,
            after=event.after,
            position=SourcePosition(commit, seq),
            before=event.before,
            commit_ts=event.commit_ts,
        )

    # --- reporting -------------------------------------------------------------------------------

    def _skip(self, line_no: int, what: str) -> None:
        self._tombstones += 1
        logger.debug(
            "skipped %s source=%s file=%s line=%d skipped_total=%d",
            what,
            self.source_id,
            self.name,
            line_no,
            self._tombstones,
        )

    def _reject(self, line_no: int, offset: int, reason: str, data: bytes) -> None:
        self._rejected_total += 1
        text = data.rstrip(b"\r\n").decode("utf-8", "backslashreplace")
        kept = text if len(text) <= _RAW_KEPT_CHARS else text[:_RAW_KEPT_CHARS] + "...[truncated]"
        self._rejected.append(RejectedEvent(f"{self.name} line {line_no}", reason, kept))
        count = self._rejected_total
        if count <= _LOG_EACH_FIRST or count % _LOG_EVERY == 0:
            logger.warning(
                "rejected change event source=%s file=%s line=%d reason=%s rejected_total=%d%s",
                self.source_id,
                self.name,
                line_no,
                reason,
                count,
                f" (further rejections logged one in {_LOG_EVERY})"
                if count == _LOG_EACH_FIRST
                else "",
            )
        if self._rejected_path is not None:
            entry = {
                "source": self.source_id,
                "file": str(self._path) if self._path is not None else self.name,
                "line": line_no,
                "offset": offset,
                "reason": reason,
                "raw": text,
                "rejected_at": time.time(),
            }
            try:
                with open(self._rejected_path, "a", encoding="utf-8") as out:
                    out.write(json.dumps(entry, ensure_ascii=False) + "\n")
            except OSError as exc:
                # The line is still in the input file and in the log above; keep flowing.
                logger.error(
                    "cannot write rejected event source=%s path=%s error=%s",
                    self.source_id,
                    self._rejected_path,
                    exc,
                )

    def _warn_backwards(self, line_no: int, commit: int, previous: int) -> None:
        if self._warned_backwards:
            return
        self._warned_backwards = True
        logger.warning(
            "commit position goes backwards source=%s line=%d commit=%d previous=%d: give "
            "'source.lsn_commit' (the transaction's commit LSN); a change's own LSN is not "
            "ordered across concurrent transactions (logged once)",
            self.source_id,
            line_no,
            commit,
            previous,
        )
