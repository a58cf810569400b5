"""Benchmarks are not run by the suite (timings never pass or fail a test), but they must not
rot: each one imports, and so finds every helper it borrows from the tests."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

BENCHMARKS = sorted(
    p.stem
    for p in (Path(__file__).resolve().parents[2] / "benchmarks").glob("*.py")
    if p.stem not in {"__init__", "agent_common"}  # agent_common is shared set-up, not a benchmark
)


def test_there_are_benchmarks() -> None:
    assert len(BENCHMARKS) >= 8


@pytest.mark.parametrize("name", BENCHMARKS)
def test_benchmark_imports(name: str) -> None:
    module = importlib.import_module(f"benchmarks.{name}")
    assert callable(getattr(module, "main", None)), f"benchmarks/{name}.py has no main()"


@pytest.mark.parametrize("folder", ["benchmarks", "devtools"])
def test_benchmarks_and_dev_tools_do_not_import_the_tests(folder: str) -> None:
    """What they share with the tests lives in devtools/harness/; the tests import it, not the
    other way round."""
    root = Path(__file__).resolve().parents[2]
    offenders = []
    for path in sorted((root / folder).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom) and node.level == 0
                else []
            )
            offenders += [
                f"{path.relative_to(root)}: {n}" for n in names if n.split(".")[0] == "tests"
            ]
    assert offenders == []
