"""The order of a recovery pass, by itself: priority first, equals by turns, budgets."""

from __future__ import annotations

from compute.queue_id import QueueId
from compute.recovery.schedule import ReplaySchedule

PRIORITY = {"public.a": 0, "public.b": 0, "public.top": 5, "public.low": -1}


def queue(table: str) -> QueueId:
    return QueueId("1", f"public.{table}", "1")


def turns(schedule: ReplaySchedule, batches_left: dict[QueueId, int]) -> list[tuple[str, int]]:
    """Play the pass out: each queue has ``batches_left`` batches of events."""
    played = []
    while (turn := schedule.next_turn()) is not None:
        q, batches = turn
        done = min(batches, batches_left[q])
        batches_left[q] -= done
        played.append((q.table.removeprefix("public."), batches))
        schedule.turn_ended(q, batches, more=batches_left[q] > 0)
    return played


def test_higher_priority_first_then_equals_by_turns_of_one_batch() -> None:
    schedule = ReplaySchedule(
        [queue("low"), queue("a"), queue("b"), queue("top")],
        lambda q: PRIORITY[q.table],
        budget=50,
    )
    left = {queue("low"): 2, queue("a"): 3, queue("b"): 1, queue("top"): 2}
    assert turns(schedule, left) == [
        ("top", 1),
        ("top", 1),
        ("a", 1),
        ("b", 1),
        ("a", 1),
        ("a", 1),
        ("low", 1),
        ("low", 1),
    ]


def test_a_pipelined_queue_alone_at_the_top_takes_its_budget_in_one_turn() -> None:
    schedule = ReplaySchedule(
        [queue("a"), queue("b"), queue("low")],
        lambda q: PRIORITY[q.table],
        budget=4,
        pipelined=lambda q: True,
    )
    left = {queue("a"): 2, queue("b"): 9, queue("low"): 9}
    # a and b share the top by turns; b, alone there, takes the rest of its budget
    # at once (its read-ahead stays on); low then gets its whole budget.
    assert turns(schedule, left) == [("a", 1), ("b", 1), ("a", 1), ("b", 3), ("low", 4)]
    assert schedule.used_budget(queue("b")) and schedule.used_budget(queue("low"))
    assert not schedule.used_budget(queue("a"))


def test_a_queue_joins_a_pass_once_and_goes_by_its_priority() -> None:
    schedule = ReplaySchedule([queue("low")], lambda q: PRIORITY[q.table], budget=50)
    assert schedule.next_turn() == (queue("low"), 1)
    schedule.turn_ended(queue("low"), 1, more=True)
    assert schedule.add(queue("top"))  # filled during the pass
    assert schedule.next_turn() == (queue("top"), 1)
    schedule.turn_ended(queue("top"), 1, more=False)
    assert not schedule.add(queue("top"))  # it left this pass: the next one takes it
    assert schedule.next_turn() == (queue("low"), 1)
    schedule.leave(queue("low"))
    assert schedule.next_turn() is None and not schedule
