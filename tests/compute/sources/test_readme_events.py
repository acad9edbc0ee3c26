"""The README's JSON-lines examples, read from the README itself, through ``JsonLinesSource``.

The README shows real event lines, what each becomes, and the exact reason a
bad line is rejected with; these tests fail as soon as the README and the
source disagree.
"""

from __future__ import annotations

import json
import re
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from compute.sources.jsonl_source import JsonLinesSource
from destinations.records import ChangeRecord

README = Path(__file__).resolve().parents[3] / "README.md"
# The source options the README's examples are read with (it says so above them).
PRIMARY_KEYS = {"public.audit_log": ["id"]}

# Lines that break each field the README's table describes, one per documented
# rejection message; the test checks the README quotes exactly what they produce.
U = {"table": "u", "lsn": 1}
AUDIT = {"schema": "public", "table": "audit_log", "lsn": 1}
ROW = {"id": 1}
BROKEN: list[dict[str, Any]] = [
    {"after": ROW, "source": U, "key": ROW},
    {"op": "t", "source": U},
    {"op": "c", "after": ROW, "key": ROW},
    {"op": "c", "after": ROW, "source": "users", "key": ROW},
    {"op": "c", "after": ROW, "source": {"lsn": 1}, "key": ROW},
    {"op": "c", "after": ROW, "source": {"table": "", "lsn": 1}, "key": ROW},
    {"op": "c", "after": ROW, "source": {"table": "a\x00b", "lsn": 1}, "key": ROW},
    {"op": "c", "after": ROW, "source": {**U, "schema": 5}, "key": ROW},
    {"op": "c", "after": ROW, "source": {"table": "u", "lsn_commit": -1}, "key": ROW},
    {"op": "c", "after": ROW, "source": {"table": "u"}, "key": ROW},
    {"op": "c", "after": ROW, "source": {"table": "u", "lsn": "16B3748"}, "key": ROW},
    {"op": "c", "after": ROW, "source": {"table": "u", "lsn": 2**63}, "key": ROW},
    {"op": "c", "after": ROW, "source": {**U, "seq": "first"}, "key": ROW},
    {"op": "c", "after": ROW, "source": {**U, "ts_ms": "2024-12-01"}, "key": ROW},
    {"op": "c", "after": ROW, "source": U, "key": {}},
    {"op": "c", "after": ROW, "source": U, "key": {"id": None}},
    {"op": "c", "after": ROW, "source": U, "key": {"id": [1]}},
    {"op": "c", "after": ROW, "source": {**U, "pk": 5}},
    {"op": "c", "after": {"name": "x"}, "source": AUDIT},
    {"op": "c", "after": ROW, "source": {**AUDIT, "pk": []}},
    {"op": "c", "after": {"id": None}, "source": AUDIT},
    {"op": "d", "source": AUDIT},
    {"op": "c", "source": U, "key": ROW},
    {"op": "u", "after": [1], "source": U, "key": ROW},
    {"op": "u", "before": "x", "after": ROW, "source": U, "key": ROW},
    {"payload": "x"},
]
BROKEN_LINES = [json.dumps(doc) for doc in BROKEN]


def section(name: str) -> str:
    """The README text between ``<!-- name:start -->`` and ``<!-- name:end -->``."""
    text = README.read_text(encoding="utf-8")
    match = re.search(rf"<!-- {name}:start -->\n(.*?)<!-- {name}:end -->", text, re.DOTALL)
    assert match is not None, f"README.md has no {name} section"
    return match.group(1)


def code_lines(name: str) -> list[str]:
    """The lines of the fenced code block in README section ``name``."""
    block = re.search(r"```[a-z]*\n(.*?)```", section(name), re.DOTALL)
    assert block is not None, f"README section {name} has no code block"
    return block.group(1).splitlines()


def read_all(tmp_path: Path, lines: list[str]) -> JsonLinesSource:
    path = tmp_path / "events.jsonl"
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return JsonLinesSource("2", path, None, primary_keys=PRIMARY_KEYS)


def records_of(source: JsonLinesSource) -> list[ChangeRecord]:
    batch = source.read(1000)
    assert source.exhausted
    return list(batch.records)


def test_the_readme_examples_become_the_changes_it_says(tmp_path: Path) -> None:
    lines = code_lines("readme-events")
    source = read_all(tmp_path, lines)
    records = records_of(source)
    assert source.rejected == ()

    rows = [
        [cell.strip().strip("`") for cell in row.strip().strip("|").split("|")]
        for row in section("readme-events-result").splitlines()
        if row.startswith("| ") and not row.startswith("| line ")
    ]
    assert len(records) == len(lines) == len(rows)
    for line, record, (number, table, op, key, position) in zip(lines, records, rows, strict=True):
        event = json.loads(line, parse_float=Decimal)
        assert (record.table, record.op.value, dict(record.key)) == (
            table,
            op,
            json.loads(key),
        ), f"line {number}"
        assert str(record.position) == position, f"line {number}"
        # the row as written: exact decimals, nothing added or left out; none for a delete
        expected_after = None if op == "d" else event["after"]
        assert record.after == expected_after, f"line {number}"
        assert record.before == event.get("before"), f"line {number}"
        assert record.commit_ts == (
            event["source"]["ts_ms"] / 1000 if "ts_ms" in event["source"] else None
        )
    assert records[0].after is not None and records[0].after["balance"] == Decimal("10.50")


def test_the_readme_rejected_lines_get_the_reasons_it_shows(tmp_path: Path) -> None:
    block = code_lines("readme-event-rejects")
    lines, reasons = block[0::2], block[1::2]
    assert lines and all(reason.startswith("-> ") for reason in reasons), block
    source = read_all(tmp_path, lines)
    assert records_of(source) == []
    assert [r.reason for r in source.rejected] == [reason[3:] for reason in reasons]


def documented_rejections() -> list[str]:
    """Every message the README's field table quotes as ``rejected: `...` ``."""
    quoted = re.findall(r"rejected: `([^`]+)`", section("readme-event-fields"))
    assert len(quoted) >= 20, quoted
    return quoted


@pytest.mark.parametrize("message", documented_rejections())
def test_every_rejection_the_readme_quotes_is_a_real_reason(tmp_path: Path, message: str) -> None:
    source = read_all(tmp_path, BROKEN_LINES)
    assert records_of(source) == []
    real = [r.reason for r in source.rejected]
    assert len(real) == len(BROKEN_LINES)
    if message.endswith(" ..."):  # a message whose end depends on the value
        assert any(reason.startswith(message[:-4]) for reason in real), (message, real)
    else:
        assert message in real, (message, real)
