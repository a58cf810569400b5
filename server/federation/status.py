"""How each federated trust domain's bundle refresh last went, for the console (the metrics
carry the same times as gauges, but not the error text)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass
class RefreshStatus:
    last_success: datetime | None = None
    last_failure: datetime | None = None
    last_error: str = ""
    failures_in_a_row: int = 0
    sequence: int | None = None  # of the bundle last fetched

    def succeeded(self, now: datetime, sequence: int | None) -> None:
        self.last_success, self.sequence, self.failures_in_a_row = now, sequence, 0

    def failed(self, now: datetime, error: str) -> None:
        self.last_failure, self.last_error = now, error
        self.failures_in_a_row += 1
