"""Tests of ``OffsetStore``: round trips, atomic replacement, loud handling of a corrupt file."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import pytest

from compute.sources.base import SourceError
from compute.sources.offset_store import OffsetStore
from config.errors import RosettaError


def test_missing_file_means_no_tokens(tmp_path: Path) -> None:
    store = OffsetStore(tmp_path / "offsets.json")
    assert store.get("src") is None
    assert store.all() == {}
    assert not (tmp_path / "offsets.json").exists()  # reading never creates it


def test_put_get_and_reload(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "offsets.json"  # the directory is created on first write
    store = OffsetStore(path)
    store.put("a", "123")
    store.put("b", "7:1::0")
    store.put("a", "456")
    assert store.get("a") == "456"
    again = OffsetStore(path)
    assert again.all() == {"a": "456", "b": "7:1::0"}
    doc = json.loads(path.read_text())
    assert doc["offsets"] == {"a": "456", "b": "7:1::0"}
    assert doc["version"] == 1
    assert sorted(p.name for p in path.parent.iterdir()) == ["offsets.json"]  # no tmp left


def test_delete(tmp_path: Path) -> None:
    path = tmp_path / "offsets.json"
    store = OffsetStore(path)
    store.put("a", "1")
    store.put("b", "2")
    store.delete("a")
    store.delete("missing")  # no-op
    assert OffsetStore(path).all() == {"b": "2"}


def test_token_must_be_a_string(tmp_path: Path) -> None:
    store = OffsetStore(tmp_path / "offsets.json")
    with pytest.raises(TypeError):
        store.put("a", 5)  # type: ignore[arg-type]


def test_fsync_option_writes_the_same(tmp_path: Path) -> None:
    path = tmp_path / "offsets.json"
    OffsetStore(path, fsync=True).put("a", "9")
    assert OffsetStore(path).get("a") == "9"


def test_source_error_is_a_rosetta_error() -> None:
    assert issubclass(SourceError, RosettaError)


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "empty"),
        (b"   \n", "empty"),
        (b'{"format": "rosetta-offsets", "version": 1, "offs', "not valid JSON"),
        (b"\xff\xfe garbage", "not valid JSON"),
        (b"[1, 2]", "not a rosetta-offsets document"),
        (b'{"offsets": {}}', "not a rosetta-offsets document"),
        (b'{"format": "rosetta-offsets", "version": 99, "offsets": {}}', "unsupported version"),
        (b'{"format": "rosetta-offsets", "version": 1, "offsets": []}', "'offsets' is not"),
        (b'{"format": "rosetta-offsets", "version": 1, "offsets": {"a": 5}}', "not a string"),
    ],
)
def test_corrupt_file_raises_naming_the_file(tmp_path: Path, content: bytes, reason: str) -> None:
    path = tmp_path / "offsets.json"
    path.write_bytes(content)
    with pytest.raises(SourceError) as info:
        OffsetStore(path)
    message = str(info.value)
    assert str(path) in message
    assert reason in message
    assert path.read_bytes() == content  # untouched: the operator decides


def test_corrupt_file_with_allow_reset_logs_error_and_starts_empty(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "offsets.json"
    path.write_bytes(b'{"format": "rosetta-off')
    with caplog.at_level(logging.ERROR, logger="compute.sources.offset_store"):
        store = OffsetStore(path, allow_reset=True)
    assert store.all() == {}
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert str(path) in errors[0].getMessage()
    assert "beginning" in errors[0].getMessage()
    kept = [p for p in tmp_path.iterdir() if p.name.startswith("offsets.json.corrupt-")]
    assert len(kept) == 1 and kept[0].read_bytes() == b'{"format": "rosetta-off'
    store.put("a", "1")
    assert OffsetStore(path).get("a") == "1"


def test_crash_before_rename_keeps_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "offsets.json"
    store = OffsetStore(path)
    store.put("a", "100")

    def crash(*_: Any) -> None:
        raise OSError("simulated crash before the rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(SourceError, match="cannot write offset file"):
        store.put("a", "200")
    monkeypatch.undo()
    assert store.get("a") == "100"  # memory follows the file, not the failed write
    assert OffsetStore(path).get("a") == "100"
    assert [p.name for p in tmp_path.iterdir()] == ["offsets.json"]


def test_half_written_temporary_file_is_never_read(tmp_path: Path) -> None:
    """A crash mid-write leaves a stray tmp file; the real file stays whole and valid."""
    path = tmp_path / "offsets.json"
    OffsetStore(path).put("a", "100")
    (tmp_path / "offsets.json.12345.tmp").write_bytes(b'{"format": "rosetta-offsets", "ver')
    assert OffsetStore(path).get("a") == "100"


def test_unreadable_or_unwritable_location_raises_source_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(SourceError, match="cannot read offset file"):
        OffsetStore(blocker / "offsets.json")
    store = OffsetStore(tmp_path / "later" / "offsets.json")
    (tmp_path / "later").write_text("a file where the directory should be")
    with pytest.raises(SourceError, match="cannot write offset file"):
        store.put("a", "1")
