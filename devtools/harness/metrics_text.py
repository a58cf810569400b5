"""One sample out of a Prometheus text exposition, for the daemons' /metrics in tests."""

from __future__ import annotations

from collections.abc import Mapping


def sample(text: str, name: str, labels: Mapping[str, str] | None = None) -> float | None:
    """The value of `name{labels}` (labels in exposition order), None when absent."""
    want = ",".join(f'{k}="{v}"' for k, v in (labels or {}).items())
    target = f"{name}{{{want}}}" if want else name
    for line in text.splitlines():
        head, _, value = line.rpartition(" ")
        if head == target:
            return float(value)
    return None
