"""Destinations built from their specs: the engine's own per-destination options."""

from __future__ import annotations

import pytest

from config.errors import ConfigError
from config.pipelines import DestinationSpec, PipelineSpec, SourceSpec
from destinations.factory import build_destination, check_destinations

DSN = "host=127.0.0.1 port=5432 dbname=x user=u password=s3cret"


def spec(**options: object) -> DestinationSpec:
    return DestinationSpec("1", "PG", "postgresql", {"dsn": DSN, **options})


def test_a_destination_keeps_its_own_live_write_deadline() -> None:
    destination = build_destination(spec(live_write_deadline_ms=15000))
    assert destination.live_write_deadline == 15.0
    assert build_destination(spec()).live_write_deadline is None  # the engine's setting


@pytest.mark.parametrize("bad", [0, 9, 3_600_001, 1.5, "2s", "2000", True, [1]])
def test_a_bad_live_write_deadline_is_refused_naming_the_option(bad: object) -> None:
    with pytest.raises(ConfigError) as refused:
        build_destination(spec(live_write_deadline_ms=bad))
    text = str(refused.value)
    assert "destination PG (ID=1): live_write_deadline_ms must be an integer number of " in text
    assert "from 10 to 3600000" in text
    assert "s3cret" not in text


def test_a_destination_keeps_its_own_batch_size() -> None:
    destination = build_destination(spec(batch_size=50))
    assert destination.max_batch_size == 50
    assert build_destination(spec()).max_batch_size is None  # the pipeline's, DLQ_BATCH_SIZE


@pytest.mark.parametrize("bad", [0, -1, 100_001, 10**9, "x", "50", 1.5, True])
def test_a_bad_batch_size_is_refused_naming_the_option(bad: object) -> None:
    with pytest.raises(ConfigError) as refused:
        build_destination(spec(batch_size=bad))
    text = str(refused.value)
    assert (
        f"destination PG (ID=1): batch_size must be an integer number of events from 1 "
        f"to 100000, got {bad!r}" in text
    )
    assert "s3cret" not in text


@pytest.mark.parametrize(
    ("kind", "options", "valid"),
    [
        ("postgresql", {"dsn": DSN}, "connect_timeout, copy_threshold, dsn,"),
        ("snowflake", {"account": "a"}, "login_timeout, max_insert_bytes, max_rows_per_insert"),
    ],
)
def test_an_unknown_option_is_refused_naming_it_and_listing_the_valid_ones(
    kind: str, options: dict[str, object], valid: str
) -> None:
    bad = DestinationSpec(
        "2",
        "Dest",
        kind,
        {**options, "write_timout": 5, "passwrd": "s3cret"},
        {"passwrd": "passwrd_env SECRET_VAR"},
    )
    with pytest.raises(ConfigError) as refused:
        check_destinations([PipelineSpec("p", SourceSpec("1", "synthetic"), (bad,))])
    problems = refused.value.problems
    assert len(problems) == 2
    assert problems[0].startswith(
        f"destination Dest (ID=2): unknown option 'passwrd_env' for a {kind} destination; "
        "valid options: "
    )
    assert f"unknown option 'write_timout' for a {kind} destination" in problems[1]
    for problem in problems:
        assert valid in problem and "write_timeout" in problem
        assert "live_write_deadline_ms" in problem and "batch_size" in problem
        assert "s3cret" not in problem
    with pytest.raises(ConfigError, match="unknown option 'write_timout'"):
        build_destination(bad)
