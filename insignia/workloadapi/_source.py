"""A live source fed by the Workload API: the SVID and bundles a service's mTLS and JWT
checks ask for, kept current by background watches.

`WorkloadX509Source` is an `insignia.sources.X509Source`, and a `BundleSource` whose bundles
hold both kinds of authority: X.509 CAs from the X509-SVID stream and JWT keys from the JWT
bundle stream. So one object serves `insignia.spiffetls` contexts and `insignia.jwt_http`
validation, and rotation reaches the next handshake or token check with no restart.

    async with open_x509_source("unix:///run/insignia/agent.sock") as source:
        tls = server_context(source, authorize=one_of("spiffe://example.org/b"))

Blocking code uses `ThreadedX509Source`, which runs the same watches in a trio thread.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from functools import partial
from pathlib import Path

import trio

from insignia._closing import Closing
from insignia.backoff import Backoff
from insignia.bundle import Bundle, BundleSet
from insignia.sources import NoX509Svid
from insignia.spiffeid import TrustDomain
from insignia.workloadapi._backoff import DEFAULT_BACKOFF
from insignia.workloadapi._client import WorkloadApiError, X509Context
from insignia.workloadapi._trio_client import TrioWorkloadApiClient
from insignia.x509svid import X509Svid

__all__ = [
    "SourceNotReady",
    "SvidPicker",
    "ThreadedX509Source",
    "WorkloadX509Source",
    "merge_bundles",
    "open_x509_source",
]

SvidPicker = Callable[[tuple[X509Svid, ...]], X509Svid]
"""Chooses which of the caller's SVIDs to present (default: the first, the agent's default)."""


class SourceNotReady(TimeoutError):
    """The first update did not arrive in time; says what was missing and the last error."""

    def __init__(
        self,
        socket_path: Path,
        timeout: float,
        missing: tuple[str, ...],
        last_error: WorkloadApiError | None,
    ) -> None:
        why = f"; last error: {last_error}" if last_error is not None else ""
        super().__init__(
            f"no {' or '.join(missing)} from the Workload API at {socket_path} "
            f"within {timeout} s{why}"
        )
        self.socket_path = socket_path
        self.missing = missing
        self.last_error = last_error


def merge_bundles(x509_bundles: BundleSet, jwt_bundles: BundleSet) -> BundleSet:
    """One bundle per trust domain: X.509 authorities from `x509_bundles`, JWT authorities
    from `jwt_bundles` (the Workload API sends the two kinds on separate streams)."""
    domains = {b.trust_domain for b in x509_bundles} | {b.trust_domain for b in jwt_bundles}
    merged = []
    for td in domains:
        x509_part = x509_bundles.get_bundle_for_trust_domain(td)
        jwt_part = jwt_bundles.get_bundle_for_trust_domain(td)
        merged.append(
            Bundle(
                td,
                x509_part.x509_authorities if x509_part is not None else (),
                jwt_part.jwt_authorities if jwt_part is not None else {},
            )
        )
    return BundleSet.of(merged)


def _first_svid(svids: tuple[X509Svid, ...]) -> X509Svid:
    return svids[0]


class WorkloadX509Source:
    """The latest X509-SVID and bundles from the Workload API, while `run()` is running."""

    def __init__(
        self,
        client: TrioWorkloadApiClient,
        *,
        jwt_bundles: bool = True,
        picker: SvidPicker = _first_svid,
    ) -> None:
        self.client = client
        self.last_error: WorkloadApiError | None = None
        self._watch_jwt = jwt_bundles
        self._picker = picker
        self._context: X509Context | None = None
        self._svid: X509Svid | None = None
        self._jwt_bundles: BundleSet | None = None
        self._bundles = BundleSet()
        self._ready = trio.Event()
        self._updated = trio.Event()

    # --- what consumers ask for ----------------------------------------------------------

    def get_x509_svid(self) -> X509Svid:
        if self._svid is None:
            raise NoX509Svid(f"no X509-SVID from the Workload API at {self.client.socket_path} yet")
        return self._svid

    def get_bundle_for_trust_domain(self, trust_domain: TrustDomain) -> Bundle | None:
        return self._bundles.get_bundle_for_trust_domain(trust_domain)

    @property
    def x509_context(self) -> X509Context | None:
        """Every SVID and X.509 bundle of the latest update (None before the first)."""
        return self._context

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    def missing(self) -> tuple[str, ...]:
        """What has not arrived yet, as words for an error message."""
        out = []
        if self._context is None:
            out.append("X.509 context")
        if self._watch_jwt and self._jwt_bundles is None:
            out.append("JWT bundles")
        return tuple(out)

    async def wait_ready(self) -> None:
        await self._ready.wait()

    async def wait_for_update(self) -> None:
        """Return after the next update (a rotation, a bundle change) has been applied.

        An update may land before this is called, so wait in a loop on the condition:
        `while source.get_x509_svid().leaf != expected: await source.wait_for_update()`.
        """
        await self._updated.wait()

    # --- the watches ---------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Watch until cancelled. With `nursery.start`, returns once the source is ready.

        Raises the WorkloadApiError that stopped a watch (one no retry can fix).
        """
        failure: WorkloadApiError | None = None

        async def guarded(watch: Callable[[], Awaitable[object]]) -> None:
            nonlocal failure
            try:
                await watch()
            except WorkloadApiError as exc:
                failure = failure or exc
                nursery.cancel_scope.cancel()

        client = self.client
        async with trio.open_nursery() as nursery:
            on_error = self._on_error
            nursery.start_soon(
                guarded,
                partial(client.watch_x509_contexts, self._on_x509_context, on_error=on_error),
            )
            if self._watch_jwt:
                nursery.start_soon(
                    guarded,
                    partial(client.watch_jwt_bundles, self._on_jwt_bundles, on_error=on_error),
                )
            await self._ready.wait()
            task_status.started()
        if failure is not None:
            raise failure

    def _on_x509_context(self, context: X509Context) -> None:
        svid = self._picker(context.svids)
        self._context = context
        self._svid = svid
        self._apply()

    def _on_jwt_bundles(self, bundles: BundleSet) -> None:
        self._jwt_bundles = bundles
        self._apply()

    def _on_error(self, error: WorkloadApiError) -> None:
        self.last_error = error

    def _apply(self) -> None:
        x509_bundles = self._context.bundles if self._context is not None else BundleSet()
        self._bundles = merge_bundles(x509_bundles, self._jwt_bundles or BundleSet())
        if not self.missing():
            self._ready.set()
        self._updated.set()
        self._updated = trio.Event()


@contextlib.asynccontextmanager
async def open_x509_source(
    socket: Path | str | None = None,
    *,
    ready_timeout: float = 10.0,
    jwt_bundles: bool = True,
    picker: SvidPicker = _first_svid,
    backoff: Backoff = DEFAULT_BACKOFF,
) -> AsyncIterator[WorkloadX509Source]:
    """A ready source whose watches run for the duration of the block.

    `socket`: a path, `unix:///path`, or None for `SPIFFE_ENDPOINT_SOCKET`. Raises
    `SourceNotReady` when the first X.509 context (and JWT bundles, unless `jwt_bundles` is
    False) has not arrived within `ready_timeout` seconds.
    """
    client = TrioWorkloadApiClient(socket, backoff=backoff)
    source = WorkloadX509Source(client, jwt_bundles=jwt_bundles, picker=picker)
    with _single_error_unwrapped():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(source.run)
            with trio.move_on_after(ready_timeout):
                await source.wait_ready()
            try:
                if source.ready:
                    yield source
            finally:
                nursery.cancel_scope.cancel()
    if not source.ready:
        raise SourceNotReady(client.socket_path, ready_timeout, source.missing(), source.last_error)


@contextlib.contextmanager
def _single_error_unwrapped() -> Iterator[None]:
    """Let the one error of the block's nursery (the watch's, or the caller's own) out bare.

    The nursery is an implementation detail with a single background task, so callers can
    catch `WorkloadApiError` or their own exceptions without `except*`.
    """
    try:
        yield
    except BaseExceptionGroup as group:
        leaf: BaseException = group
        while isinstance(leaf, BaseExceptionGroup) and len(leaf.exceptions) == 1:
            leaf = leaf.exceptions[0]
        if leaf is group:
            raise
        raise leaf from None


class ThreadedX509Source(Closing):
    """`WorkloadX509Source` for blocking code: the watches run in a background thread.

    The constructor returns once the source is ready (or raises SourceNotReady). Call
    `close()`, or use it as a context manager, to stop the thread.
    """

    def __init__(
        self,
        socket: Path | str | None = None,
        *,
        ready_timeout: float = 10.0,
        jwt_bundles: bool = True,
        picker: SvidPicker = _first_svid,
        backoff: Backoff = DEFAULT_BACKOFF,
    ) -> None:
        self._opened = threading.Event()
        self._source: WorkloadX509Source | None = None
        self._failure: Exception | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self._closed = False
        opener = partial(
            open_x509_source,
            socket,
            ready_timeout=ready_timeout,
            jwt_bundles=jwt_bundles,
            picker=picker,
            backoff=backoff,
        )
        self._thread = threading.Thread(
            target=trio.run, args=(self._main, opener), name="insignia-x509-source", daemon=True
        )
        self._thread.start()
        self._opened.wait()  # open_x509_source enforces the deadline
        try:
            self._live()
        except Exception:
            self._thread.join()
            raise

    async def _main(
        self, opener: Callable[[], contextlib.AbstractAsyncContextManager[WorkloadX509Source]]
    ) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._stop = trio.Event()
        try:
            async with opener() as source:
                self._source = source
                self._opened.set()
                await self._stop.wait()
        except Exception as exc:
            self._failure = exc
        finally:
            self._opened.set()

    def _live(self) -> WorkloadX509Source:
        if self._closed:
            raise RuntimeError("this ThreadedX509Source is closed")
        if self._failure is not None:
            raise self._failure
        assert self._source is not None  # set before the constructor returns
        return self._source

    def get_x509_svid(self) -> X509Svid:
        return self._live().get_x509_svid()

    def get_bundle_for_trust_domain(self, trust_domain: TrustDomain) -> Bundle | None:
        return self._live().get_bundle_for_trust_domain(trust_domain)

    @property
    def x509_context(self) -> X509Context | None:
        return self._live().x509_context

    def close(self) -> None:
        """Stop the watches and wait for the thread; safe to call twice."""
        self._closed = True
        if self._token is not None and self._stop is not None:
            with contextlib.suppress(trio.RunFinishedError):
                trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
        self._thread.join()
