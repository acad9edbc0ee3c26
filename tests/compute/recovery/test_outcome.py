"""One decision per replay write: its outcome from what it raised, asking only what it needs."""

from __future__ import annotations

from concurrent.futures import Future

import pytest

from compute.recovery.outcome import Decision, Outcome, StuckWrite, decide
from destinations.errors import ClassifiedError, FailureKind

TRANSIENT = ClassifiedError(FailureKind.TRANSIENT, "OperationalError", "timeout")
LOST = ClassifiedError(FailureKind.TRANSIENT, "OperationalError", "reset", connection_lost=True)
PERMANENT = ClassifiedError(FailureKind.PERMANENT, "DataError", "bad value", code="22P02")


class Asked:
    """Scripted answers to decide's questions, and which ones it asked, in order."""

    def __init__(self, classified: ClassifiedError, up: bool = True, attempts: int = 1) -> None:
        self.classified, self.up, self.count = classified, up, attempts
        self.calls: list[str] = []

    def decide(self, error: BaseException | None) -> Decision:
        return decide(
            error,
            classify=self.classify,
            destination_up=self.destination_up,
            attempts=self.attempts,
            max_retries=3,
        )

    def classify(self, error: BaseException) -> ClassifiedError:
        self.calls.append("classify")
        return self.classified

    def destination_up(self) -> bool:
        self.calls.append("probe")
        return self.up

    def attempts(self) -> int:
        self.calls.append("attempts")
        return self.count


def test_a_committed_write_is_acknowledged_without_asking_anything() -> None:
    asked = Asked(TRANSIENT)
    assert asked.decide(None) == Decision(Outcome.ACKNOWLEDGED)
    assert asked.calls == []


def test_a_write_past_its_deadline_is_held_unclassified() -> None:
    asked = Asked(TRANSIENT)
    assert asked.decide(StuckWrite(Future())).outcome is Outcome.HELD
    assert asked.calls == []


def test_a_permanent_failure_is_poison_without_a_probe_or_a_charge() -> None:
    asked = Asked(PERMANENT)
    assert asked.decide(ValueError("x")) == Decision(Outcome.POISON, PERMANENT)
    assert asked.calls == ["classify"]


@pytest.mark.parametrize(
    ("classified", "up"), [(TRANSIENT, False), (LOST, True), (LOST, False)], ids=str
)
def test_an_outage_or_a_lost_session_retries_later_charging_nothing(
    classified: ClassifiedError, up: bool
) -> None:
    asked = Asked(classified, up=up)
    assert asked.decide(OSError("x")) == Decision(Outcome.RETRY_LATER, classified)
    assert asked.calls == ["classify", "probe"]


@pytest.mark.parametrize(
    ("attempts", "outcome"),
    [(1, Outcome.RETRY_LATER), (3, Outcome.RETRY_LATER), (4, Outcome.POISON)],
)
def test_a_transient_failure_while_up_is_charged_and_poison_over_the_budget(
    attempts: int, outcome: Outcome
) -> None:
    asked = Asked(TRANSIENT, attempts=attempts)
    assert asked.decide(OSError("x")) == Decision(outcome, TRANSIENT, attempts)
    assert asked.calls == ["classify", "probe", "attempts"]
