"""Pipelines TOML: the documented schema, secrets from the environment, every error at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from config.errors import ConfigError
from config.pipelines import load_pipelines_file, table_priority

GOOD = """
[[pipelines]]
name = "orders"
batch_size = 200
retry = "conservative"

[pipelines.source]
id = 1
type = "jsonl"
path = "events.jsonl"
primary_keys = { "public.audit" = ["id"] }

[[pipelines.destinations]]
id = "1"
name = "Postgres-Local"
type = "postgresql"
dsn_env = "DEST_DSN"
position_guard = true

[[pipelines.destinations]]
id = "2"
name = "Snowflake-Prod"
type = "snowflake"
account = "acme"
user = "loader"
password_env = "SF_PASSWORD"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "pipelines.toml"
    path.write_text(text)
    return path


def test_good_file(tmp_path: Path) -> None:
    env = {"DEST_DSN": "host=db password=s3cret", "SF_PASSWORD": "hunter2"}
    [spec] = load_pipelines_file(write(tmp_path, GOOD), env)
    assert (spec.name, spec.batch_size, spec.retry) == ("orders", 200, "conservative")
    assert spec.source.id == "1" and spec.source.type == "jsonl"
    assert spec.source.options["primary_keys"] == {"public.audit": ["id"]}
    pg, sf = spec.destinations
    assert pg.options == {"dsn": "host=db password=s3cret", "position_guard": True}
    assert sf.options["password"] == "hunter2"
    assert "s3cret" not in repr(spec) and "hunter2" not in repr(spec)


def test_every_problem_reported_at_once(tmp_path: Path) -> None:
    text = """
[[pipelines]]
name = "a"
batch_size = 0
retry = "sometimes"
[pipelines.source]
id = "1"
type = "kafka"
[[pipelines.destinations]]
id = "1"
name = "x"
type = "postgresql"
dsn_env = "MISSING_DSN"
[[pipelines.destinations]]
id = "1"
name = "y"
type = "mysql"
"""
    with pytest.raises(ConfigError) as caught:
        load_pipelines_file(write(tmp_path, text), {})
    text_of = str(caught.value)
    assert "'batch_size' must be an integer from 1 to 100000, got 0" in text_of
    assert "'retry' must be one of aggressive, conservative, default, got 'sometimes'" in text_of
    assert "'type' must be one of synthetic, jsonl, postgresql, got 'kafka'" in text_of
    assert "MISSING_DSN which is not set" in text_of
    assert "'type' must be one of postgresql, snowflake, got 'mysql'" in text_of
    assert len(caught.value.problems) >= 5


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_pipelines_file(tmp_path / "nope.toml", {})
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_pipelines_file(write(tmp_path, "[[pipelines]\nname="), {})
    with pytest.raises(ConfigError, match=r"at least one \[\[pipelines\]\]"):
        load_pipelines_file(write(tmp_path, "title = 'x'\n"), {})


def test_duplicate_names_and_shared_source_ids(tmp_path: Path) -> None:
    block = """
[[pipelines]]
name = "same"
[pipelines.source]
id = "{sid}"
type = "synthetic"
[[pipelines.destinations]]
id = "9"
name = "d"
type = "postgresql"
dsn = "host=x"
"""
    with pytest.raises(ConfigError) as caught:
        load_pipelines_file(write(tmp_path, block.format(sid=1) + block.format(sid=1)), {})
    assert "duplicate pipeline name 'same'" in str(caught.value)
    assert "source id '1' is already used by pipeline 'same'" in str(caught.value)


def test_example_pipelines_file_is_valid() -> None:
    path = Path(__file__).resolve().parents[2] / "examples" / "pipelines.toml"
    specs = load_pipelines_file(path, {"DEST_DSN": "host=127.0.0.1"})
    assert [s.name for s in specs] == ["demo", "from-debezium"]
    assert specs[1].destinations[0].options["position_guard"] is True


def test_tables_and_append_only_lists(tmp_path: Path) -> None:
    text = GOOD.replace(
        'retry = "conservative"\n',
        'retry = "conservative"\ntables = ["public.orders"]\n'
        'append_only = ["public.audit_log", "public.audit_log", "history"]\n',
    )
    env = {"DEST_DSN": "host=db", "SF_PASSWORD": "x"}
    [spec] = load_pipelines_file(write(tmp_path, text), env)
    assert spec.tables == ("public.orders",)
    assert spec.append_only == ("public.audit_log", "history")
    [plain] = load_pipelines_file(write(tmp_path, GOOD), env)
    assert (plain.tables, plain.append_only) == ((), ())


@pytest.mark.parametrize("value", ['"public.audit_log"', "[1]", '[""]'])
def test_append_only_must_be_a_list_of_table_names(tmp_path: Path, value: str) -> None:
    retry = 'retry = "conservative"\n'
    text = GOOD.replace(retry, f"{retry}append_only = {value}\n")
    with pytest.raises(ConfigError) as caught:
        load_pipelines_file(write(tmp_path, text), {"DEST_DSN": "host=db", "SF_PASSWORD": "x"})
    assert str(caught.value).startswith(
        f"{tmp_path / 'pipelines.toml'}: pipelines[0]: 'append_only' must be a list of table "
        'names like ["public.audit_log"], got '
    )


PG_SOURCE = """
[[pipelines]]
name = "cdc"

[pipelines.source]
id = "7"
type = "postgresql"
{source}
tables = ["public.orders"]

[[pipelines.destinations]]
id = "1"
name = "PG"
type = "postgresql"
dsn = "host=dest"
"""


def test_a_postgresql_source_reads_its_dsn_from_the_environment(tmp_path: Path) -> None:
    text = PG_SOURCE.format(source='dsn_env = "SRC_DSN"')
    [spec] = load_pipelines_file(write(tmp_path, text), {"SRC_DSN": "host=src password=pw1"})
    assert spec.source.type == "postgresql"
    assert spec.source.options == {"dsn": "host=src password=pw1", "tables": ["public.orders"]}
    assert "pw1" not in repr(spec)


@pytest.mark.parametrize(
    ("source", "problem"),
    [
        ('dsn_env = "SRC_DSN"', "'dsn_env' names environment variable SRC_DSN which is not set"),
        ("", "a postgresql source needs 'dsn' or 'dsn_env'"),
    ],
)
def test_a_postgresql_source_without_a_dsn_is_named(
    tmp_path: Path, source: str, problem: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_pipelines_file(write(tmp_path, PG_SOURCE.format(source=source)), {})
    assert problem in str(caught.value)
    assert "pipelines[0].source" in str(caught.value)


def test_priority_per_table(tmp_path: Path) -> None:
    retry = 'retry = "conservative"\n'
    text = GOOD.replace(retry, f'{retry}priority = {{ "public.orders" = 10, "audit" = -100 }}\n')
    env = {"DEST_DSN": "host=db", "SF_PASSWORD": "x"}
    [spec] = load_pipelines_file(write(tmp_path, text), env)
    assert spec.priority == {"public.orders": 10, "audit": -100}
    # qualified name first, then the bare name, else the default 0
    assert table_priority(spec.priority, "public.orders") == 10
    assert table_priority(spec.priority, "archive.audit") == -100
    assert table_priority(spec.priority, "public.customers") == 0
    [plain] = load_pipelines_file(write(tmp_path, GOOD), env)
    assert plain.priority == {}


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (
            '{ "public.orders" = "high" }',
            "'priority' of table 'public.orders' must be an integer from -100 to 100 "
            "(higher replays first, default 0), got 'high'",
        ),
        (
            '{ "public.orders" = 101 }',
            "'priority' of table 'public.orders' must be an integer from -100 to 100 "
            "(higher replays first, default 0), got 101",
        ),
        (
            '{ "public.orders" = true }',
            "'priority' of table 'public.orders' must be an integer from -100 to 100 "
            "(higher replays first, default 0), got True",
        ),
        (
            '{ "public.orders" = 1.5 }',
            "'priority' of table 'public.orders' must be an integer from -100 to 100 "
            "(higher replays first, default 0), got 1.5",
        ),
        (
            "10",
            "'priority' must be a table of table names to integers, like "
            '{ "public.orders" = 10 }, got 10',
        ),
    ],
)
def test_a_bad_priority_names_the_table_the_value_and_the_range(
    tmp_path: Path, value: str, problem: str
) -> None:
    retry = 'retry = "conservative"\n'
    text = GOOD.replace(retry, f"{retry}priority = {value}\n")
    with pytest.raises(ConfigError) as caught:
        load_pipelines_file(write(tmp_path, text), {"DEST_DSN": "host=db", "SF_PASSWORD": "x"})
    assert str(caught.value) == f"{tmp_path / 'pipelines.toml'}: pipelines[0]: {problem}"
