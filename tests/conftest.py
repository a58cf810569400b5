"""Run-wide reporting: the Go interop figures the issue tracker asks every run to show."""

from __future__ import annotations

import time

import pytest

from tests.integration.go_interop import BUILD_SECONDS, CACHE

GO_INTEROP_TESTS = "/test_interop_go"  # test_interop_go.py and test_interop_go_sds.py
_SESSION_START = time.time()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """One line: how many Go interop cases ran, by outcome, and the Go build time if this run
    built the client (a cached binary costs nothing)."""
    counts = {
        outcome: sum(
            1
            for report in terminalreporter.stats.get(outcome, [])
            if GO_INTEROP_TESTS in getattr(report, "nodeid", "")
            and (outcome in ("skipped", "error") or getattr(report, "when", "call") == "call")
        )
        for outcome in ("passed", "failed", "skipped", "error")
    }
    if not any(counts.values()):
        return
    built = [
        path.read_text().strip()
        for path in CACHE.glob(f"*/{BUILD_SECONDS}")
        if path.stat().st_mtime >= _SESSION_START
    ]
    build = f"built in {built[0]} s" if built else "cached binary"
    summary = ", ".join(f"{n} {outcome}" for outcome, n in counts.items() if n)
    terminalreporter.write_line(
        f"Go interop (go-spiffe v2.9.0, go-control-plane envoy v1.40.0, grpc-go v1.85.0): "
        f"{summary}; {build}"
    )
