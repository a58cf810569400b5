"""The server's Prometheus metrics, in a registry of its own (served on /metrics)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.svids_signed = Counter(
            "insignia_server_svids_signed", "SVIDs signed, by type", ["type"], registry=r
        )
        self.signing_refused = Counter(
            "insignia_server_signing_refused", "Signing requests refused", ["type"], registry=r
        )
        self.agents_attested = Counter(
            "insignia_server_agents_attested",
            "Successful node attestations, by attestor",
            ["attestor"],
            registry=r,
        )
        self.attestations_failed = Counter(
            "insignia_server_attestations_failed",
            "Refused node attestations",
            ["attestor"],
            registry=r,
        )
        self.entries = Gauge("insignia_server_entries", "Registration entries", registry=r)
        self.agents = Gauge("insignia_server_agents", "Attested agents", registry=r)
        self.connected_agents = Gauge(
            "insignia_server_connected_agents", "Agents with an open Sync stream", registry=r
        )
        self.ca_expiry = Gauge(
            "insignia_server_ca_expiry_timestamp_seconds",
            "NotAfter of the active signing authority, by kind (x509, jwt)",
            ["kind"],
            registry=r,
        )
        self.federation_last_success = Gauge(
            "insignia_server_federation_last_success_timestamp_seconds",
            "When a peer's bundle endpoint last gave an acceptable bundle, by trust domain",
            ["trust_domain"],
            registry=r,
        )
        self.federation_last_failure = Gauge(
            "insignia_server_federation_last_failure_timestamp_seconds",
            "When fetching a peer's bundle last failed or was refused, by trust domain",
            ["trust_domain"],
            registry=r,
        )
        self.federation_failures = Counter(
            "insignia_server_federation_refresh_failures",
            "Failed or refused bundle fetches, by trust domain",
            ["trust_domain"],
            registry=r,
        )
        self.rpc_latency = Histogram(
            "insignia_server_rpc_duration_seconds",
            "Unary RPC latency, by service, method and status code",
            ["service", "method", "code"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=r,
        )

    def forget_federation(self, trust_domain: str) -> None:
        """Drop a deleted relationship's series: a last success that never moves again
        would look like a peer gone quiet."""
        for metric in (
            self.federation_last_success,
            self.federation_last_failure,
            self.federation_failures,
        ):
            with contextlib.suppress(KeyError):
                metric.remove(trust_domain)

    def bind_gauges(
        self, entries: Callable[[], int], agents: Callable[[], int], connected: Callable[[], int]
    ) -> None:
        """Gauges read live from the in-memory model when scraped."""
        self.entries.set_function(lambda: float(entries()))
        self.agents.set_function(lambda: float(agents()))
        self.connected_agents.set_function(lambda: float(connected()))

    @contextlib.contextmanager
    def rpc(self, service: str, method: str) -> Iterator[list[str]]:
        """Time one RPC; the handler may set `outcome[0]` to its status code name."""
        outcome = ["OK"]
        start = time.perf_counter()
        try:
            yield outcome
        except BaseException:
            if outcome[0] == "OK":
                outcome[0] = "ABORTED_OR_FAILED"
            raise
        finally:
            self.rpc_latency.labels(service, method, outcome[0]).observe(
                time.perf_counter() - start
            )
