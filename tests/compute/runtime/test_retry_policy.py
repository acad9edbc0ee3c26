"""RetryPolicy (compute/runtime/retry_policy.py): growth, cap, jitter, presets, validation."""

from __future__ import annotations

import dataclasses
import math
import random
from pathlib import Path

import pytest

from compute.runtime.retry_policy import RetryPolicy
from config import DLQConfig


def policy(**overrides: float) -> RetryPolicy:
    fields: dict[str, float] = {"max_retries": 5, "base_delay": 1.0, "max_delay": 60.0}
    fields.update(overrides)
    return RetryPolicy(**fields)  # type: ignore[arg-type]


# --- exponential growth and cap ---------------------------------------------------------------


def test_defaults_of_optional_fields() -> None:
    p = RetryPolicy(max_retries=3, base_delay=1.0, max_delay=10.0)
    assert p.multiplier == 2.0
    assert p.jitter == 0.5


def test_exponential_growth_without_jitter() -> None:
    p = policy(jitter=0.0, max_delay=1000.0)
    assert [p.next_delay(n) for n in range(1, 9)] == [1, 2, 4, 8, 16, 32, 64, 128]


def test_growth_is_exponential_not_linear() -> None:
    """Seed 000 multiplied linearly while calling it exponential; we must not."""
    p = policy(jitter=0.0, base_delay=0.5, multiplier=3.0, max_delay=1e6)
    delays = [p.next_delay(n) for n in range(1, 7)]
    assert delays == [0.5, 1.5, 4.5, 13.5, 40.5, 121.5]
    ratios = {b / a for a, b in zip(delays, delays[1:], strict=False)}
    assert ratios == {3.0}


def test_multiplier_one_is_constant_backoff() -> None:
    p = policy(jitter=0.0, base_delay=2.0, multiplier=1.0)
    assert {p.next_delay(n) for n in range(1, 50)} == {2.0}


def test_fractional_multiplier_values() -> None:
    p = policy(jitter=0.0, base_delay=0.1, multiplier=1.5, max_delay=100.0)
    for n in range(1, 10):
        assert p.next_delay(n) == pytest.approx(0.1 * 1.5 ** (n - 1))


def test_delay_is_capped() -> None:
    p = policy(jitter=0.0, base_delay=1.0, max_delay=10.0)
    assert [p.next_delay(n) for n in range(1, 8)] == [1, 2, 4, 8, 10, 10, 10]


def test_cap_equal_to_base_gives_constant_delay() -> None:
    p = policy(jitter=0.0, base_delay=3.0, max_delay=3.0)
    assert [p.next_delay(n) for n in (1, 2, 10, 1000)] == [3.0] * 4


@pytest.mark.parametrize("attempt", [1075, 10_000, 10**9, 10**30])
def test_huge_attempt_does_not_overflow(attempt: int) -> None:
    p = policy(jitter=0.0, max_delay=30.0)
    assert p.next_delay(attempt) == 30.0
    jittered = policy(jitter=1.0, max_delay=30.0)
    assert 0.0 <= jittered.next_delay(attempt, random.Random(1)) <= 30.0


def test_zero_base_delay_is_always_zero() -> None:
    p = policy(base_delay=0.0, max_delay=0.0, jitter=1.0)
    assert [p.next_delay(n, random.Random(n)) for n in (1, 2, 5000)] == [0.0, 0.0, 0.0]


def test_delay_is_a_float() -> None:
    p = RetryPolicy(max_retries=1, base_delay=1, max_delay=8, jitter=0)
    assert type(p.next_delay(3)) is float
    assert p.next_delay(3) == 4.0


# --- jitter ----------------------------------------------------------------------------------


@pytest.mark.parametrize("jitter", [0.0, 0.1, 0.5, 0.9, 1.0])
def test_jitter_stays_within_bounds(jitter: float) -> None:
    p = policy(jitter=jitter, base_delay=0.25, max_delay=20.0)
    rng = random.Random(12345)
    for attempt in range(1, 30):
        ceiling = min(20.0, 0.25 * 2.0 ** (attempt - 1))
        floor = ceiling * (1 - jitter)
        for _ in range(200):
            delay = p.next_delay(attempt, rng)
            assert floor <= delay <= ceiling
            assert 0.0 <= delay <= p.max_delay


def test_equal_jitter_spreads_over_the_upper_half() -> None:
    p = policy(jitter=0.5, base_delay=8.0, max_delay=8.0)
    rng = random.Random(7)
    samples = [p.next_delay(1, rng) for _ in range(5000)]
    assert min(samples) >= 4.0
    assert max(samples) <= 8.0
    # Uniform on (4, 8]: actually spread out, mean near 6.
    assert min(samples) < 4.1
    assert max(samples) > 7.9
    assert sum(samples) / len(samples) == pytest.approx(6.0, abs=0.1)


def test_full_jitter_spreads_from_zero_to_the_ceiling() -> None:
    p = policy(jitter=1.0, base_delay=10.0, max_delay=10.0)
    rng = random.Random(99)
    samples = [p.next_delay(1, rng) for _ in range(5000)]
    assert min(samples) >= 0.0
    assert max(samples) <= 10.0
    assert min(samples) < 0.1
    assert sum(samples) / len(samples) == pytest.approx(5.0, abs=0.2)


def test_jitter_never_exceeds_cap_even_with_extreme_draws() -> None:
    class Extreme(random.Random):
        def __init__(self, value: float) -> None:
            super().__init__(0)
            self.value = value

        def random(self) -> float:
            return self.value

    p = policy(jitter=1.0, base_delay=1.0, max_delay=5.0)
    for attempt in (1, 3, 50):
        assert p.next_delay(attempt, Extreme(0.0)) == min(5.0, 2.0 ** (attempt - 1))
        high = p.next_delay(attempt, Extreme(math.nextafter(1.0, 0.0)))
        assert 0.0 <= high <= 5.0


def test_zero_jitter_does_not_touch_the_rng() -> None:
    rng = random.Random(5)
    state = rng.getstate()
    policy(jitter=0.0).next_delay(3, rng)
    assert rng.getstate() == state


def test_unseeded_call_uses_module_random_and_stays_in_bounds() -> None:
    p = policy(jitter=0.5, base_delay=2.0, max_delay=2.0)
    for _ in range(100):
        assert 1.0 <= p.next_delay(1) <= 2.0


# --- determinism / purity --------------------------------------------------------------------


def test_same_seed_gives_same_delays() -> None:
    p = policy(jitter=0.7)
    first = [p.next_delay(n, random.Random(42)) for n in range(1, 20)]
    second = [p.next_delay(n, random.Random(42)) for n in range(1, 20)]
    assert first == second

    rng_a, rng_b = random.Random(2024), random.Random(2024)
    assert [p.next_delay(n, rng_a) for n in range(1, 20)] == [
        p.next_delay(n, rng_b) for n in range(1, 20)
    ]


def test_different_seeds_give_different_delays() -> None:
    p = policy(jitter=0.5)
    a = [p.next_delay(5, random.Random(1)) for _ in range(3)]
    b = [p.next_delay(5, random.Random(2)) for _ in range(3)]
    assert a != b


def test_next_delay_does_not_change_the_policy() -> None:
    p = policy(jitter=0.5)
    before = dataclasses.asdict(p)
    for n in range(1, 10):
        p.next_delay(n, random.Random(n))
    assert dataclasses.asdict(p) == before


# --- should_retry ----------------------------------------------------------------------------


def test_should_retry_within_budget() -> None:
    p = policy(max_retries=3)
    assert [p.should_retry(n) for n in range(1, 7)] == [True, True, True, False, False, False]


def test_zero_retries_never_retries() -> None:
    assert not policy(max_retries=0).should_retry(1)


@pytest.mark.parametrize("bad", [0, -1, -100])
def test_should_retry_rejects_attempt_below_one(bad: int) -> None:
    with pytest.raises(ValueError, match="attempt"):
        policy().should_retry(bad)


# --- from_config -----------------------------------------------------------------------------


def test_from_default_config() -> None:
    p = RetryPolicy.from_config(DLQConfig())
    assert p == RetryPolicy(max_retries=5, base_delay=1.0, max_delay=60.0)


def test_from_config_converts_milliseconds() -> None:
    cfg = DLQConfig(max_retries=7, backoff_base_ms=250, backoff_max_ms=4000)
    p = RetryPolicy.from_config(cfg)
    assert p.max_retries == 7
    assert p.base_delay == 0.25
    assert p.max_delay == 4.0
    assert p.multiplier == 2.0
    assert p.jitter == 0.5
    no_jitter = dataclasses.replace(p, jitter=0.0)
    assert [no_jitter.next_delay(n) for n in range(1, 7)] == [0.25, 0.5, 1.0, 2.0, 4.0, 4.0]


def test_from_loaded_settings(tmp_path: Path) -> None:
    from config import load_settings

    settings = load_settings(
        env={"DLQ_MAX_RETRIES": "2", "DLQ_BACKOFF_BASE_MS": "100", "DLQ_BACKOFF_MAX_MS": "800"},
        dotenv_path=tmp_path / "absent.env",
    )
    assert RetryPolicy.from_config(settings.dlq) == RetryPolicy(2, 0.1, 0.8)


# --- presets ---------------------------------------------------------------------------------


def test_aggressive_preset_matches_the_seed() -> None:
    """Seed 003: 5 attempts (4 retries), waits 100, 200, 400, then 500 ms (capped)."""
    p = RetryPolicy.aggressive()
    assert (p.max_retries, p.base_delay, p.max_delay) == (4, 0.1, 0.5)
    exact = dataclasses.replace(p, jitter=0.0)
    retries = [n for n in range(1, 10) if p.should_retry(n)]
    assert [exact.next_delay(n) for n in retries] == [0.1, 0.2, 0.4, 0.5]


def test_conservative_preset_matches_the_seed() -> None:
    """Seed 003: 3 attempts (2 retries), from 1 s, capped at 10 s."""
    p = RetryPolicy.conservative()
    assert (p.max_retries, p.base_delay, p.max_delay) == (2, 1.0, 10.0)
    exact = dataclasses.replace(p, jitter=0.0)
    assert [exact.next_delay(n) for n in range(1, 7)] == [1, 2, 4, 8, 10, 10]
    assert [p.should_retry(n) for n in (1, 2, 3)] == [True, True, False]


def test_default_preset_follows_default_settings() -> None:
    assert RetryPolicy.default() == RetryPolicy.from_config(DLQConfig())


@pytest.mark.parametrize("name", ["aggressive", "conservative", "default"])
def test_preset_by_name(name: str) -> None:
    assert RetryPolicy.preset(name) == getattr(RetryPolicy, name)()


def test_preset_names_are_case_and_space_insensitive() -> None:
    assert RetryPolicy.preset(" Aggressive ") == RetryPolicy.aggressive()
    assert RetryPolicy.preset("CONSERVATIVE") == RetryPolicy.conservative()


def test_presets_are_ordered_by_patience() -> None:
    aggressive, conservative = RetryPolicy.aggressive(), RetryPolicy.conservative()
    assert aggressive.base_delay < conservative.base_delay
    assert aggressive.max_delay < conservative.max_delay


def test_preset_names_listed() -> None:
    assert set(RetryPolicy.PRESET_NAMES) == {"aggressive", "conservative", "default"}
    assert "PRESET_NAMES" not in {f.name for f in dataclasses.fields(RetryPolicy)}


@pytest.mark.parametrize("name", ["", "fast", "aggresive", "preset", "defaults"])
def test_unknown_preset_names_the_accepted_ones(name: str) -> None:
    with pytest.raises(ValueError) as info:
        RetryPolicy.preset(name)
    text = str(info.value)
    assert repr(name) in text
    for accepted in ("aggressive", "conservative", "default"):
        assert accepted in text


def test_preset_rejects_non_string() -> None:
    with pytest.raises(ValueError, match="aggressive, conservative, default"):
        RetryPolicy.preset(None)  # type: ignore[arg-type]


# --- immutability and validation -------------------------------------------------------------


def test_policy_is_frozen_and_hashable() -> None:
    p = RetryPolicy.aggressive()
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.max_retries = 10  # type: ignore[misc]
    assert hash(p) == hash(RetryPolicy.aggressive())
    assert {p, RetryPolicy.aggressive()} == {p}


@pytest.mark.parametrize("attempt", [0, -1, -(10**9)])
def test_next_delay_rejects_attempt_below_one(attempt: int) -> None:
    with pytest.raises(ValueError, match="attempt must be >= 1"):
        policy().next_delay(attempt)


@pytest.mark.parametrize("attempt", [1.0, 2.5, "1", None, True])
def test_next_delay_rejects_non_int_attempt(attempt: object) -> None:
    with pytest.raises(TypeError, match="attempt"):
        policy().next_delay(attempt)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="attempt"):
        policy().should_retry(attempt)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"max_retries": -1}, "max_retries must be >= 0"),
        ({"base_delay": -0.1}, "base_delay must be >= 0"),
        ({"base_delay": 5.0, "max_delay": 4.0}, "max_delay (4.0) must be >= base_delay (5.0)"),
        ({"multiplier": 0.5}, "multiplier must be >= 1"),
        ({"multiplier": 0.0}, "multiplier must be >= 1"),
        ({"jitter": -0.01}, "jitter must be between 0 and 1"),
        ({"jitter": 1.5}, "jitter must be between 0 and 1"),
        ({"base_delay": math.nan}, "base_delay must be finite"),
        ({"max_delay": math.inf}, "max_delay must be finite"),
        ({"multiplier": math.inf}, "multiplier must be finite"),
        ({"jitter": math.nan}, "jitter must be finite"),
    ],
)
def test_invalid_fields_are_rejected(overrides: dict[str, float], fragment: str) -> None:
    with pytest.raises(ValueError) as info:
        policy(**overrides)
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    "overrides",
    [{"max_retries": 2.5}, {"max_retries": True}, {"base_delay": "1"}, {"jitter": None}],
)
def test_wrongly_typed_fields_are_rejected(overrides: dict[str, object]) -> None:
    with pytest.raises(TypeError):
        policy(**overrides)  # type: ignore[arg-type]


def test_replace_revalidates() -> None:
    with pytest.raises(ValueError):
        dataclasses.replace(RetryPolicy.aggressive(), max_delay=0.01)
