"""Events per second of a running total, over the last few seconds, for status and metrics."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable


class EventRate:
    """The rate of a growing total (a pipeline's delivered events) over about ``window`` s.

    Readers pass the total they read; a sample is kept at most once per
    ``resolution`` seconds, so frequent readers (scrapes, ``/health``, the
    CLI) cost a few comparisons. The rate is measured from the oldest sample
    still inside the window (or, after a quiet spell with no reader, from the
    last sample before it) to now; the first sample is the start at 0.
    """

    def __init__(
        self,
        window: float = 10.0,
        *,
        resolution: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.window = window
        self.resolution = resolution
        self._clock = clock
        self._lock = threading.Lock()
        self._samples: deque[tuple[float, int]] = deque([(clock(), 0)])

    def rate(self, total: int) -> float:
        """Events per second up to now, ``total`` being the running total now."""
        now = self._clock()
        with self._lock:
            samples = self._samples
            if now - samples[-1][0] >= self.resolution:
                samples.append((now, total))
            # Keep one sample at or before the window's start: the base of the rate.
            while len(samples) > 1 and samples[1][0] <= now - self.window:
                samples.popleft()
            since, base = samples[0]
        elapsed = now - since
        return max(0.0, (total - base) / elapsed) if elapsed > 0 else 0.0
