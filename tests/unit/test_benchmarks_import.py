"""Benchmarks are not run by the suite (timings never pass or fail a test), but they must not
rot: each one imports, and so finds every helper it borrows from the tests."""

from __future__ import annotations

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
