"""An immutable retry policy with a pure backoff function, in the style of urllib3's ``Retry``.

Counting convention: ``attempt`` is the 1-based number of the *retry* about to be made,
which equals the number of failures so far. The first try is not a retry::

    attempt = 0
    while True:
        try:
            write(batch)
            break
        except TransientError:
            attempt += 1
            if not policy.should_retry(attempt):
                park_or_enqueue(batch)
                break
            stop_event.wait(policy.next_delay(attempt))

Backoff is truly exponential, ``base_delay * multiplier ** (attempt - 1)``, capped at
``max_delay`` (unlike seed 000, which grows linearly while calling it exponential).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import ClassVar

from config.dlq_config import DLQConfig

__all__ = ["RetryPolicy"]


def _check_attempt(attempt: int) -> None:
    # bool is an int subclass; True as an attempt number is surely a caller bug.
    if isinstance(attempt, bool) or not isinstance(attempt, int):
        raise TypeError(f"attempt must be an int, got {attempt!r}")
    if attempt < 1:
        raise ValueError(f"attempt must be >= 1 (the first retry is attempt 1), got {attempt}")


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to wait before retrying a transient failure.

    ``jitter`` is the fraction of the capped exponential delay that is randomised
    *downwards*: the delay is drawn uniformly from ``(d * (1 - jitter), d]`` where
    ``d = min(max_delay, base_delay * multiplier ** (attempt - 1))``. The default 0.5 is
    "equal jitter" (half fixed, half random); 1.0 is "full jitter" (``(0, d]``); 0.0 turns
    jitter off. Jitter never raises a delay, so ``max_delay`` is a hard ceiling.
    """

    max_retries: int
    base_delay: float
    max_delay: float
    multiplier: float = 2.0
    jitter: float = 0.5

    PRESET_NAMES: ClassVar[tuple[str, ...]] = ("aggressive", "conservative", "default")

    def __post_init__(self) -> None:
        if isinstance(self.max_retries, bool) or not isinstance(self.max_retries, int):
            raise TypeError(f"max_retries must be an int, got {self.max_retries!r}")
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {self.max_retries}")
        for name in ("base_delay", "max_delay", "multiplier", "jitter"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise TypeError(f"{name} must be a number, got {value!r}")
            if not math.isfinite(value):
                raise ValueError(f"{name} must be finite, got {value!r}")
        if self.base_delay < 0:
            raise ValueError(f"base_delay must be >= 0 seconds, got {self.base_delay}")
        if self.max_delay < self.base_delay:
            raise ValueError(
                f"max_delay ({self.max_delay}) must be >= base_delay ({self.base_delay})"
            )
        if self.multiplier < 1:
            raise ValueError(f"multiplier must be >= 1, got {self.multiplier}")
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"jitter must be between 0 and 1, got {self.jitter}")

    def should_retry(self, attempt: int) -> bool:
        """True if retry number ``attempt`` (1-based) is within the budget."""
        _check_attempt(attempt)
        return attempt <= self.max_retries

    def next_delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before retry number ``attempt`` (1-based); pure given ``rng``.

        Works for any attempt, also beyond ``max_retries`` (a recovery worker backs off
        per queue without a budget). ``rng`` defaults to the module-level generator.
        """
        _check_attempt(attempt)
        if self.base_delay == 0:
            return 0.0
        try:
            raw = self.base_delay * self.multiplier ** (attempt - 1)
        except OverflowError:  # float power beyond ~1e308: long past the cap anyway
            raw = math.inf
        capped = min(raw, self.max_delay)
        if self.jitter == 0:
            return float(capped)
        draw = (rng or random).random()  # in [0, 1)
        return float(capped * (1.0 - self.jitter * draw))

    @classmethod
    def from_config(cls, dlq_config: DLQConfig) -> RetryPolicy:
        """Build from the ``DLQ_MAX_RETRIES`` and ``DLQ_BACKOFF_*_MS`` settings."""
        return cls(
            max_retries=dlq_config.max_retries,
            base_delay=dlq_config.backoff_base_ms / 1000,
            max_delay=dlq_config.backoff_max_ms / 1000,
        )

    # Presets follow seed 003: "aggressive: 5 attempts, 100ms -> 500ms" and
    # "conservative: 3 attempts, 1s -> 10s". Its attempts include the first try, so
    # they are 4 and 2 retries here.

    @classmethod
    def aggressive(cls) -> RetryPolicy:
        """Quick retries for short blips: 4 retries, 0.1 s doubling, capped at 0.5 s."""
        return cls(max_retries=4, base_delay=0.1, max_delay=0.5)

    @classmethod
    def conservative(cls) -> RetryPolicy:
        """Few, slow retries: 2 retries, 1 s doubling, capped at 10 s."""
        return cls(max_retries=2, base_delay=1.0, max_delay=10.0)

    @classmethod
    def default(cls) -> RetryPolicy:
        """The policy of the default settings: 5 retries, 1 s doubling, capped at 60 s."""
        return cls.from_config(DLQConfig())

    @classmethod
    def preset(cls, name: str) -> RetryPolicy:
        """The named preset: ``aggressive``, ``conservative`` or ``default``."""
        key = name.strip().lower() if isinstance(name, str) else name
        if key not in cls.PRESET_NAMES:
            raise ValueError(
                f"unknown retry preset {name!r}: expected one of {', '.join(cls.PRESET_NAMES)}"
            )
        factory = {
            "aggressive": cls.aggressive,
            "conservative": cls.conservative,
            "default": cls.default,
        }[key]
        return factory()
