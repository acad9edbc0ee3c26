"""The packages import one way, down the layers of the README's "Layout"; modules stay small.

Every import (lazy ones inside functions too) of every module under compute/,
config/ and destinations/ is read from the source; an import of a package
of a higher layer, or of a sibling of the same layer, fails with the file,
line and the two packages named.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Higher imports lower, never the other way; packages of one layer do not
# import each other. Inside a package anything goes.
LAYERS: dict[str, int] = {
    "compute.cli": 11,
    "compute.engine": 10,
    "compute.admin": 9,
    "compute.observability": 8,
    "compute.recovery": 8,
    "compute.delivery": 7,
    "compute.dlq": 6,
    "compute.sources": 6,
    "compute.sources.debezium": 5,
    "compute.sources.postgres": 5,
    "compute.codec": 5,
    "compute.storage": 5,
    "compute.runtime": 4,
    "compute.error_codes": 3,
    "compute.errors": 2,
    "compute.queue_id": 2,
    "destinations": 1,
    "config": 0,
}


def owner(module: str) -> str | None:
    """The layered package (or module) ``module`` belongs to; None outside the project."""
    for name in sorted(LAYERS, key=len, reverse=True):
        if module == name or module.startswith(name + "."):
            return name
    return None


def imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.append((node.lineno, node.module))
    return found


def modules() -> list[Path]:
    tops = ("compute", "config", "destinations")
    return sorted(path for top in tops for path in (ROOT / top).rglob("*.py"))


def test_every_module_belongs_to_a_layer() -> None:
    orphans = [
        str(p.relative_to(ROOT))
        for p in modules()
        if p != ROOT / "compute" / "__init__.py"
        and owner(".".join(p.relative_to(ROOT).with_suffix("").parts)) is None
    ]
    assert orphans == [], "modules outside every layer (add them to LAYERS and the README)"


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_point_down(path: Path) -> None:
    here = owner(".".join(path.relative_to(ROOT).with_suffix("").parts))
    if here is None:
        return  # compute/__init__.py: the package itself, imports nothing
    wrong = []
    for line, module in imports(path):
        there = owner(module)
        if there is None or there == here:
            continue
        if LAYERS[there] >= LAYERS[here]:
            wrong.append(f"{path.relative_to(ROOT)}:{line} ({here}) imports {module} ({there})")
    assert wrong == [], "imports against the layers:\n" + "\n".join(wrong)


MAX_MODULE_LINES = 500


def test_every_module_says_its_one_job_and_stays_small() -> None:
    """Each module opens with a docstring (its job) and stays under 500 lines."""
    problems = []
    for path in modules():
        text = path.read_text()
        if not ast.get_docstring(ast.parse(text)):
            problems.append(f"{path.relative_to(ROOT)}: no docstring saying its job")
        lines = text.count("\n")
        if lines > MAX_MODULE_LINES:
            problems.append(f"{path.relative_to(ROOT)}: {lines} lines (split it by job)")
    assert problems == []
