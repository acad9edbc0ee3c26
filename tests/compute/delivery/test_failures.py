"""The failure context a change stores: captured from the raised error, truncated, masked."""

from __future__ import annotations

import traceback
from pathlib import Path

from compute.codec.failure_context import FailureContext
from compute.codec.message import DLQMessage, decode_message, encode_message
from compute.delivery.failures import (
    MAX_ERROR_MESSAGE_CHARS,
    capture_failure,
    failed_again,
)
from compute.delivery.short_stack import MAX_STACK_CHARS, MAX_STACK_FRAMES
from compute.queue_id import QueueId
from destinations.errors import ClassifiedError, FailureKind
from tests.builders import change

T0 = 1_700_000_000.0


def stored(failure: FailureContext) -> FailureContext:
    """``failure`` as it reads back from a DLQ message on disk."""
    message = DLQMessage.create(QueueId("1", "public.t", "2"), change(1, 1), failure)
    return decode_message(encode_message(message)).failure


# --- capture_failure and failed_again ----------------------------------------------


def _raise_deep(depth: int, message: str) -> None:
    if depth == 0:
        raise RuntimeError(message)
    _raise_deep(depth - 1, message)


def _caught(depth: int = 3, message: str = "boom") -> BaseException:
    try:
        _raise_deep(depth, message)
    except RuntimeError as error:
        return error
    raise AssertionError("unreachable")


def test_capture_failure_captures_class_message_and_stack() -> None:
    error = _caught()
    ctx = capture_failure(error, now=T0)
    assert ctx.error_class == "RuntimeError"
    assert ctx.message == "boom"
    assert ctx.kind is FailureKind.TRANSIENT  # unclassified counts as transient
    assert ctx.code is None
    assert "_raise_deep" in ctx.stack
    assert ctx.stack.rstrip().endswith("RuntimeError: boom")
    assert ctx.attempts == 1
    assert ctx.first_failure_at == ctx.last_failure_at == T0


def test_capture_failure_without_traceback() -> None:
    ctx = capture_failure(KeyError("k"), now=T0)
    assert ctx.error_class == "KeyError"
    assert ctx.message == "'k'"
    assert "KeyError" in ctx.stack


def test_capture_failure_uses_the_classified_error() -> None:
    classified = ClassifiedError(FailureKind.PERMANENT, "UniqueViolation", "dup key", "23505")
    ctx = capture_failure(_caught(), classified, attempts=4, now=T0)
    assert (ctx.error_class, ctx.message, ctx.kind, ctx.code) == (
        "UniqueViolation",
        "dup key",
        FailureKind.PERMANENT,
        "23505",
    )
    assert ctx.attempts == 4
    assert "_raise_deep" in ctx.stack  # the stack is still the exception's


def test_capture_failure_defaults_now_to_wall_clock() -> None:
    import time

    before = time.time()
    ctx = capture_failure(_caught())
    assert before <= ctx.first_failure_at <= time.time()


def test_huge_message_and_deep_stack_are_cut_to_the_innermost_frames() -> None:
    error = _caught(depth=300, message="x" * 10_000 + "END")
    ctx = capture_failure(error, now=T0)
    assert len(ctx.message) == MAX_ERROR_MESSAGE_CHARS
    assert ctx.message.startswith("xxx") and ctx.message.endswith("[truncated]")
    assert len(ctx.stack) <= MAX_STACK_CHARS
    lines = ctx.stack.splitlines()
    assert lines[0] == (
        f"Traceback (most recent call last; innermost {MAX_STACK_FRAMES} of 302 frames):"
    )
    assert lines[-1].startswith("RuntimeError: xxx") and lines[-1].endswith("[truncated]")
    # The innermost frames, where it was raised: _raise_deep at depth 0 and above.
    assert ctx.stack.count("in _raise_deep") == MAX_STACK_FRAMES
    assert lines[-2] == "    raise RuntimeError(message)"


def _chained(depth: int) -> BaseException:
    """An exception with ``depth`` chained causes: a long stack of distinct sections."""
    cause: BaseException | None = None
    for level in range(depth):
        try:
            raise ValueError(f"level {level}")
        except ValueError as error:
            error.__cause__ = cause
            cause = error
    final = _caught(2, "innermost")
    final.__cause__ = cause
    return final


def test_chained_causes_get_one_line_each_after_the_error() -> None:
    error = _chained(60)
    full = "".join(traceback.format_exception(error))
    assert len(full) > 4 * MAX_STACK_CHARS
    ctx = capture_failure(error, now=T0)
    assert len(ctx.stack) <= MAX_STACK_CHARS
    assert ctx.stack.splitlines()[-4:] == [
        "RuntimeError: innermost",
        f"caused by: ValueError: level 59 ({_THIS_FILE}, line {_LEVEL_LINE})",
        f"caused by: ValueError: level 58 ({_THIS_FILE}, line {_LEVEL_LINE})",
        f"caused by: ValueError: level 57 ({_THIS_FILE}, line {_LEVEL_LINE})",
    ]
    assert "_raise_deep" in ctx.stack
    assert stored(ctx) == ctx


_THIS_FILE = "tests/compute/delivery/test_failures.py"
_LEVEL_LINE = _chained.__code__.co_firstlineno + 5


def test_stack_paths_are_short_and_carry_no_caret_lines() -> None:
    """Paths relative to the import root, source lines kept, Python 3.11's ^^^ lines not."""
    ctx = capture_failure(_caught(), now=T0)
    assert f'File "{_THIS_FILE}", line ' in ctx.stack
    assert "    _raise_deep(depth - 1, message)" in ctx.stack
    assert str(Path(__file__).parents[3]) not in ctx.stack and "^^^" not in ctx.stack
    assert len(ctx.stack) < 600


def test_classified_message_is_truncated_too() -> None:
    classified = ClassifiedError(FailureKind.TRANSIENT, "E", "y" * 5000)
    ctx = capture_failure(_caught(), classified, now=T0)
    assert len(ctx.message) == MAX_ERROR_MESSAGE_CHARS


def test_failed_again_increments_attempts_and_keeps_first_failure() -> None:
    ctx = capture_failure(_caught(), now=T0)
    again = failed_again(
        ctx, ClassifiedError(FailureKind.PERMANENT, "CheckViolation", "z" * 3000, "23514"), T0 + 60
    )
    assert again.attempts == 2
    assert again.first_failure_at == T0
    assert again.last_failure_at == T0 + 60
    assert (again.error_class, again.kind, again.code) == (
        "CheckViolation",
        FailureKind.PERMANENT,
        "23514",
    )
    assert len(again.message) == MAX_ERROR_MESSAGE_CHARS
    assert again.stack == ctx.stack
    third = failed_again(again, ClassifiedError(FailureKind.TRANSIENT, "E", "m"), T0 + 120)
    assert third.attempts == 3
    assert ctx.attempts == 1  # frozen: the original is unchanged
