"""A live WIT-SVID source: the caller's WIT-SVIDs with their keys, and the WIT bundles, kept
current by two background watches (FetchWITSVID, FetchWITBundles).

It is what `insignia.wit_httpx.WitAuth` signs with (`credential`) and what
`insignia.wit_http.WitVerifier` checks against (a `BundleSource`), so a rotated key or a
revoked WIT key reaches the next request with no restart. The watches run in daemon threads
on the blocking client and reconnect with `insignia.backoff`.

    with ThreadedWitSource(socket_path) as source:
        httpx.get(url, auth=WitAuth(source.credential))
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from insignia._closing import Closing
from insignia.backoff import Backoff, Retries
from insignia.bundle import Bundle, BundleSet
from insignia.spiffeid import TrustDomain
from insignia.wit import WitCredential
from insignia.workloadapi._backoff import DEFAULT_BACKOFF
from insignia.workloadapi._client import WorkloadApiClient, WorkloadApiError

__all__ = ["ThreadedWitSource"]

T = TypeVar("T")


class ThreadedWitSource(Closing):
    """Holds the newest FetchWITSVID and FetchWITBundles messages; `wait` for the first."""

    def __init__(
        self, socket_path: Path, backoff: Backoff = DEFAULT_BACKOFF, timeout: float = 30.0
    ) -> None:
        self.socket_path = socket_path
        self._backoff = backoff
        self._credentials: list[WitCredential] = []
        self._bundles = BundleSet()
        self._have_svids = threading.Event()
        self._have_bundles = threading.Event()
        self._closed = threading.Event()
        self.last_error: WorkloadApiError | None = None
        self._client = WorkloadApiClient(socket_path, timeout=timeout)
        for name, watch, keep in (
            ("svids", self._client.watch_wit_svids, self._keep_svids),
            ("bundles", self._client.watch_wit_bundles, self._keep_bundles),
        ):
            args = (watch, keep)
            threading.Thread(
                target=self._follow, args=args, name=f"wit-{name}", daemon=True
            ).start()

    def _keep_svids(self, credentials: list[WitCredential]) -> None:
        self._credentials = credentials
        self._have_svids.set()

    def _keep_bundles(self, bundles: BundleSet) -> None:
        self._bundles = bundles
        self._have_bundles.set()

    def _follow(self, watch: Callable[[], Iterator[T]], keep: Callable[[T], None]) -> None:
        retries = Retries(self._backoff, random.random)
        while not self._closed.is_set():
            try:
                for message in watch():
                    keep(message)
                    retries.succeeded()
                    if self._closed.is_set():
                        return
            except WorkloadApiError as exc:
                self.last_error = exc
            self._closed.wait(retries.failed())

    def wait(self, timeout: float) -> None:
        """Until both streams have answered once; TimeoutError naming the last error."""
        if not (self._have_svids.wait(timeout) and self._have_bundles.wait(timeout)):
            raise TimeoutError(
                f"no WIT-SVID from the Workload API at {self.socket_path} within {timeout} s"
                + (f"; last error: {self.last_error}" if self.last_error else "")
            )

    def credential(self) -> WitCredential:
        """The default (first) WIT-SVID with its key, as of the newest message."""
        if not self._credentials:
            raise LookupError(f"no WIT-SVID yet from {self.socket_path}")
        return self._credentials[0]

    def get_bundle_for_trust_domain(self, trust_domain: TrustDomain) -> Bundle | None:
        return self._bundles.get_bundle_for_trust_domain(trust_domain)

    def close(self) -> None:
        self._closed.set()
        self._client.close()
