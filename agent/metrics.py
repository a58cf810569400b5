"""The agent's Prometheus metrics, in a registry of its own (served on /metrics).

Names follow Prometheus conventions (`_total` counters, `_seconds` units). Attestation
failures are labelled by a short reason class, never by free text, so the label set stays
bounded whatever a broken plugin reports.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)


class AgentMetrics:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.registry = CollectorRegistry()
        self._clock = clock
        self._last_contact: float | None = None
        self._latency: dict[tuple[str, str], Any] = {}
        self._served: dict[str, Any] = {}
        r = self.registry
        self.workloads_attested = Counter(
            "insignia_agent_workloads_attested", "Workload API callers attested", registry=r
        )
        self.attestation_failures = Counter(
            "insignia_agent_workload_attestation_failures",
            "Workload attestations that failed, by reason",
            ["reason"],
            registry=r,
        )
        self.svids_served = Counter(
            "insignia_agent_svids_served", "SVIDs sent to workloads", ["type"], registry=r
        )
        self.rotations = Counter(
            "insignia_agent_svid_rotations",
            "X.509-SVIDs (re)signed, by reason",
            ["reason"],
            registry=r,
        )
        self.rpc_latency = Histogram(
            "insignia_agent_workload_rpc_duration_seconds",
            "Workload API latency: whole call for unary RPCs, first message for streams",
            ["method", "code"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.open_streams = Gauge(
            "insignia_agent_workload_streams", "Open Workload API streams", registry=r
        )
        self.cached_entries = Gauge(
            "insignia_agent_cached_entries", "Registration entries in the agent cache", registry=r
        )
        self.sync_reconnects = Counter(
            "insignia_agent_sync_reconnects", "Times the Sync stream was re-opened", registry=r
        )
        since = Gauge(
            "insignia_agent_seconds_since_server_contact",
            "Seconds since the last successful exchange with the server (-1: never)",
            registry=r,
        )
        since.set_function(self.seconds_since_server_contact)

    # Cached label children: `labels()` costs a lock and a dict build on every call, and
    # these run on every Workload API call.

    def observe_rpc(self, method: str, code: str, seconds: float) -> None:
        child = self._latency.get((method, code))
        if child is None:
            child = self._latency[(method, code)] = self.rpc_latency.labels(method, code)
        child.observe(seconds)

    def served(self, kind: str, count: int) -> None:
        child = self._served.get(kind)
        if child is None:
            child = self._served[kind] = self.svids_served.labels(kind)
        child.inc(count)

    def attestation_failed(self, reason: str) -> None:
        self.attestation_failures.labels(reason).inc()

    def server_contact(self) -> None:
        """Record a successful exchange with the server (sync update, signing, renewal)."""
        self._last_contact = self._clock()

    def seconds_since_server_contact(self) -> float:
        if self._last_contact is None:
            return -1.0
        return self._clock() - self._last_contact
