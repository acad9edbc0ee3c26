"""Parsers of settings' text values (sizes, bounded numbers, paths), and of a group of variables."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from decimal import Decimal
from pathlib import Path

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB

# variable -> (field of the group's dataclass, parser, what is accepted)
Variables = Mapping[str, tuple[str, Callable[[str], object], str]]

_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "kib": KIB,
    "m": 1000**2,
    "mb": 1000**2,
    "mib": MIB,
    "g": 1000**3,
    "gb": 1000**3,
    "gib": GIB,
    "t": 1000**4,
    "tb": 1000**4,
    "tib": 1024 * GIB,
}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")
SIZE_HELP = (
    "a size such as 1048576, 512MB, 512MiB or 10GiB (units B, KB, KiB, MB, MiB, GB, GiB, TB, TiB)"
)


def parse_size(text: str) -> int:
    """Parse ``512MB`` / ``10GiB`` / ``1048576`` into bytes; ValueError if malformed."""
    match = _SIZE_RE.match(text)
    if not match:
        raise ValueError(text)
    number, unit = match.groups()
    factor = _SIZE_UNITS.get(unit.lower())
    if factor is None:
        raise ValueError(text)
    # Decimal, not float: float("4.1") * 1000**2 is 4099999.9999999995, which int() truncates.
    return int(Decimal(number) * factor)


def int_in(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(text.strip().replace("_", ""))
        if not low <= value <= high:
            raise ValueError(text)
        return value

    return parse


def seconds_in(low: float, high: float) -> Callable[[str], float]:
    def parse(text: str) -> float:
        value = float(text.strip())
        if not math.isfinite(value) or not low <= value <= high:
            raise ValueError(text)
        return value

    return parse


def size_in(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = parse_size(text)
        if not low <= value <= high:
            raise ValueError(text)
        return value

    return parse


def megabytes(text: str) -> int:
    """A whole number of MiB, or a size with a unit rounded up to whole MiB."""
    match = _SIZE_RE.match(text)
    if match and not match.group(2):
        # Unitless means MiB and must be whole: "512.5" was once read as 512 bytes (1 MiB).
        value = int(match.group(1))
    else:
        value = -(-parse_size(text) // MIB)
    if not 0 <= value <= 1024 * 1024 * 1024:
        raise ValueError(text)
    return value


# Linux limits: PATH_MAX and NAME_MAX, in bytes.
_MAX_PATH_BYTES = 4096
_MAX_NAME_BYTES = 255


def directory_path(text: str) -> Path:
    value = text.strip()
    if not value or "\x00" in value:
        raise ValueError(text)
    encoded = value.encode("utf-8", "surrogateescape")
    if len(encoded) > _MAX_PATH_BYTES:
        raise ValueError(text)
    if any(len(part) > _MAX_NAME_BYTES for part in encoded.split(b"/")):
        raise ValueError(text)
    return Path(value)


def parse_group(
    source: Mapping[str, str], variables: Variables, problems: list[str]
) -> dict[str, object]:
    """The values of ``variables`` set in ``source``, by field; bad ones go to ``problems``."""
    values: dict[str, object] = {}
    for name, (field_name, parser, accepted) in variables.items():
        raw = source.get(name)
        if raw is None:
            continue
        try:
            values[field_name] = parser(raw)
        except (ValueError, TypeError, OverflowError):
            problems.append(f"{name}={raw!r} is invalid: expected {accepted}")
    return values
