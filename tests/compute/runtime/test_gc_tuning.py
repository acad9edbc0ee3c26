"""`rosetta run`'s collector settings: raised thresholds, start-up objects frozen."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from compute.runtime.gc_tuning import STREAMING_THRESHOLDS, tune_for_streaming


@pytest.fixture
def restored_collector() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


@pytest.mark.usefixtures("restored_collector")
def test_tuning_raises_the_thresholds_and_freezes_what_exists() -> None:
    tune_for_streaming()
    assert gc.get_threshold() == STREAMING_THRESHOLDS == (100_000, 50, 100)
    assert gc.get_freeze_count() > 0
    assert gc.isenabled()  # cycles are still collected, only less often
