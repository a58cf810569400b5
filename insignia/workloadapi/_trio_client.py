"""A trio Workload API client: one-shot fetches, and watches that outlive agent restarts.

Why threads and not grpc.aio: grpc.aio needs an asyncio loop, so an SDK built on it would
force every service to start under `insignia.daemon.runtime.run` instead of `trio.run`, and would
not run under pytest-trio at all. The blocking `WorkloadApiClient` (client.py) instead runs in a
worker thread, and cancellation is exact: closing its channel cancels the RPC, which frees the
thread at once. Threads come from a private unlimited `CapacityLimiter`, so streams that stay
open for hours never take tokens from trio's default limiter. A fresh channel per call or
stream attempt means a restarted agent is reached on the next try, never after grpc's own
reconnect backoff (up to two minutes).

Watches run until cancelled: start them in a nursery. They retry every failure that may heal
(the agent is down, "no identity issued" before an entry exists, a stream the agent ended)
with exponential backoff and jitter (backoff.py), and stop only on INVALID_ARGUMENT.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import grpc
import trio

from insignia.backoff import Backoff
from insignia.bundle import BundleSet
from insignia.spiffeid import SpiffeId
from insignia.workloadapi._address import endpoint_from_env, parse_endpoint
from insignia.workloadapi._backoff import DEFAULT_BACKOFF, is_retryable
from insignia.workloadapi._client import (
    JwtSvidToken,
    WorkloadApiClient,
    WorkloadApiError,
    X509Context,
)

__all__ = ["TrioWorkloadApiClient", "resolve_socket"]

T = TypeVar("T")
OnError = Callable[[WorkloadApiError], object]

_log = logging.getLogger(__name__)  # stdlib: the SDK imposes no logging library
_END: Any = object()  # sentinel for a stream that ended without an error


def resolve_socket(socket: Path | str | None) -> Path:
    """A socket path from a Path, an endpoint address (`unix:///path`), or, when None,
    from `SPIFFE_ENDPOINT_SOCKET`; InvalidEndpoint when none of them names one."""
    if socket is None:
        return endpoint_from_env()
    if isinstance(socket, str):
        return parse_endpoint(socket)
    return socket


class TrioWorkloadApiClient:
    """Workload API calls from trio. Holds no connection: every call opens its own."""

    def __init__(
        self,
        socket: Path | str | None = None,
        *,
        timeout: float = 10.0,
        backoff: Backoff = DEFAULT_BACKOFF,
    ) -> None:
        self.socket_path = resolve_socket(socket)
        self.timeout = timeout
        self.backoff = backoff
        self._limiter = trio.CapacityLimiter(math.inf)

    def __repr__(self) -> str:
        return f"TrioWorkloadApiClient({str(self.socket_path)!r})"

    # --- one-shot calls -----------------------------------------------------------------

    async def fetch_x509_context(self) -> X509Context:
        """The caller's X509-SVIDs (default first) and bundles, as of now."""
        return await self._call(WorkloadApiClient.fetch_x509_context)

    async def fetch_x509_bundles(self) -> BundleSet:
        return await self._call(WorkloadApiClient.fetch_x509_bundles)

    async def fetch_jwt_bundles(self) -> BundleSet:
        return await self._call(WorkloadApiClient.fetch_jwt_bundles)

    async def fetch_jwt_svids(
        self, audience: Sequence[str], spiffe_id: SpiffeId | str | None = None
    ) -> list[JwtSvidToken]:
        """JWT-SVIDs whose `aud` holds every audience: one per identity, or the one named."""
        wanted = None if spiffe_id is None else str(spiffe_id)
        return await self._call(lambda client: client.fetch_jwt_svids(audience, wanted))

    async def fetch_jwt_svid(
        self, audience: Sequence[str], spiffe_id: SpiffeId | str | None = None
    ) -> JwtSvidToken:
        """The default identity's JWT-SVID for `audience` (or the identity named)."""
        return (await self.fetch_jwt_svids(audience, spiffe_id))[0]

    async def validate_jwt_svid(self, token: str, audience: str) -> tuple[SpiffeId, dict[str, Any]]:
        """Ask the agent to validate `token` for `audience`: its SPIFFE ID and claims."""
        return await self._call(lambda client: client.validate_jwt_svid(token, audience))

    # --- watches ------------------------------------------------------------------------

    async def watch_x509_contexts(
        self, on_update: Callable[[X509Context], object], *, on_error: OnError | None = None
    ) -> NoReturn:
        """Call `on_update` with every X.509 context (first at once, then on each rotation)."""
        await self._watch("X509-SVID", WorkloadApiClient.watch_x509_context, on_update, on_error)

    async def watch_x509_bundles(
        self, on_update: Callable[[BundleSet], object], *, on_error: OnError | None = None
    ) -> NoReturn:
        await self._watch("X.509 bundle", WorkloadApiClient.watch_x509_bundles, on_update, on_error)

    async def watch_jwt_bundles(
        self, on_update: Callable[[BundleSet], object], *, on_error: OnError | None = None
    ) -> NoReturn:
        await self._watch("JWT bundle", WorkloadApiClient.watch_jwt_bundles, on_update, on_error)

    # --- plumbing -----------------------------------------------------------------------

    async def _call(self, fn: Callable[[WorkloadApiClient], T]) -> T:
        """Run `fn` on a fresh blocking client in a worker thread. Cancellation closes the
        client, which cancels its RPC and so ends the abandoned thread too."""
        client = WorkloadApiClient(self.socket_path, self.timeout)
        try:
            return await trio.to_thread.run_sync(
                fn, client, abandon_on_cancel=True, limiter=self._limiter
            )
        finally:
            client.close()

    async def _watch(
        self,
        what: str,
        open_stream: Callable[[WorkloadApiClient], Iterator[T]],
        on_update: Callable[[T], object],
        on_error: OnError | None,
    ) -> NoReturn:
        attempt = 0
        while True:
            client = WorkloadApiClient(self.socket_path, self.timeout)
            try:
                messages = open_stream(client)
                while True:
                    # One thread hop per message: updates are rare (rotations), and the
                    # callback then runs in this task, so nothing arrives after cancellation.
                    item = await trio.to_thread.run_sync(
                        next, messages, _END, abandon_on_cancel=True, limiter=self._limiter
                    )
                    if item is _END:
                        raise WorkloadApiError(
                            grpc.StatusCode.UNAVAILABLE, f"the agent ended the {what} stream"
                        )
                    attempt = 0
                    on_update(item)
            except WorkloadApiError as error:
                if not is_retryable(error.code):
                    raise
                delay = self.backoff.delay(attempt, random.random())
                attempt += 1
                _log.warning(
                    "workload api %s watch on %s failed; retrying in %.3f s: %s",
                    what,
                    self.socket_path,
                    delay,
                    error,
                )
                if on_error is not None:
                    on_error(error)
            finally:
                client.close()
            await trio.sleep(delay)
