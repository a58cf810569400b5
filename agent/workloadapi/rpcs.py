"""The SPIFFE Workload API RPCs (X.509, JWT, and the WIT-SVID profile), as grpc.aio handlers
answering from the agent cache.

Every call first passes the security-header check and then the gate
(insignia.agent.workloadapi.gate: kernel credentials, attestation, the same-process check).
Streams send at once, then again whenever the cache reports a change that concerns the caller,
and stay open until the caller cancels.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any, NoReturn, Protocol

import grpc
import grpc.aio
from google.protobuf.message import Message
from google.protobuf.struct_pb2 import Struct
from insignia_proto import workload_pb2 as pb

from insignia.agent.cache.entries import Entry
from insignia.agent.cache.store import Cache, JwtSvidRecord
from insignia.agent.metrics import AgentMetrics
from insignia.agent.svids.rotation import RenewReason
from insignia.agent.workloadapi.gate import Refused, WorkloadGate
from insignia.agent.workloadapi.jwt_validation import JwtValidator
from insignia.agent.workloadapi.shared import Encoded, SharedEncodings
from insignia.agent.workloadapi.views import (
    NoIdentity,
    SvidsExpired,
    jwt_bundles,
    named_targets,
    wit_bundles,
    wit_view,
    x509_bundles,
    x509_view,
)
from insignia.bundle import BundleSet
from insignia.daemon.logs import get_logger
from insignia.daemon.peercred.credentials import PeerCredentials, PidFd
from insignia.daemon.rpc_refusal import refuse
from insignia.jwtsvid import AudienceLimits, InvalidAudience, InvalidJwtSvid
from insignia.selectors import Selector
from insignia.workload_wire import SECURITY_HEADER_KEY

log = get_logger(__name__)

Context = grpc.aio.ServicerContext[Any, Any]

NO_IDENTITY = "no identity issued"
HEADER_MISSING = "security header missing from request"


class JwtSource(Protocol):
    """Asyncio side: a JWT-SVID for (entry, audience), cached or freshly minted for `uid`."""

    async def jwt_svid(self, entry: Entry, audience: frozenset[str], uid: int) -> JwtSvidRecord: ...


class WitSource(Protocol):
    """Asyncio side: WIT-SVIDs signed for entries streams ask for (agent/svids/wit.py)."""

    def request(self, due: Sequence[tuple[Entry, RenewReason]]) -> None: ...

    def retry_at(self, entry_id: str) -> datetime | None: ...


class JwtUnavailable(Exception):
    """No JWT-SVID could be had: the server is unreachable and nothing usable is cached."""


class JwtRateLimited(Exception):
    """The caller spent its own mint budget (per uid or SPIFFE ID); others are unaffected."""


class StreamSubscriber:
    """A cache subscriber that wakes one open stream (asyncio side, same thread as trio)."""

    def __init__(self, selectors: frozenset[Selector]) -> None:
        self.selectors = selectors
        self.event = asyncio.Event()

    def wake(self) -> None:
        self.event.set()

    async def woken_or_stale(self, stale_at: datetime | None) -> None:
        """Until the cache wakes this stream, or (when given) just past `stale_at`, when the
        view must be rebuilt even though nothing changed (an SVID expired or rotated)."""
        timeout = None
        if stale_at is not None:
            timeout = max(0.0, (stale_at - _now()).total_seconds()) + 0.001
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.event.wait(), timeout)


def _now() -> datetime:
    return datetime.now(UTC)


def _svid_count(message: Message) -> int:
    assert isinstance(message, (pb.X509SVIDResponse, pb.WITSVIDResponse))
    return len(message.svids)


class WorkloadApi:
    """Implements `insignia.workload_wire.WorkloadApiServicer`."""

    def __init__(
        self,
        cache: Cache,
        gate: WorkloadGate,
        jwt_source: JwtSource,
        metrics: AgentMetrics,
        audience_limits: AudienceLimits,
        wit_source: WitSource,
    ) -> None:
        self._cache = cache
        self._wit = wit_source
        self._gate = gate
        self.audience_limits = audience_limits
        self._jwt = jwt_source
        self._metrics = metrics
        self._validator = JwtValidator()
        self._x509_encodings = SharedEncodings(self._x509_message, _svid_count)
        self._x509_bundle_encodings = SharedEncodings(self._x509_bundles_message)
        self._jwt_bundle_encodings = SharedEncodings(self._jwt_bundles_message)

    # --- the gate (agent.workload_gate), at the gRPC edge; SDS (.sds) passes it too -------

    async def authenticate(
        self, context: Context, method: str, *, header: bool = True
    ) -> tuple[PeerCredentials, frozenset[Selector]]:
        """The caller and its selectors, or the call aborted. `header=False` for SDS (Envoy
        sends no Workload API security header, and SPIRE's SDS does not ask for one) and for
        the APIs acting on behalf of others (insignia.agent.workloadapi.on_behalf), which are
        not the Workload API and check their own header, if any."""
        metadata = context.invocation_metadata() or ()
        if header and not any(k == SECURITY_HEADER_KEY and v == "true" for k, v in metadata):
            log.info("workload.header_missing", method=method, peer=context.peer())
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, HEADER_MISSING)
        try:
            admitted = await self._gate.admit(context.peer())
        except Refused as refused:
            await self._refuse(context, method, refused)
        if admitted.fresh:
            self._metrics.workloads_attested.inc()
        return admitted.caller, admitted.selectors

    async def require_same_process(
        self, context: Context, method: str, creds: PeerCredentials, when: str
    ) -> None:
        try:
            self._gate.confirm(creds, when)
        except Refused as refused:
            await self._refuse(context, method, refused)

    async def _refuse(self, context: Context, method: str, refused: Refused) -> NoReturn:
        if refused.reason is not None:
            self._metrics.attestation_failed(refused.reason)
        caller = refused.caller
        log.warning(
            refused.event,
            method=method,
            pid=None if caller is None else caller.pid,
            uid=None if caller is None else caller.uid,
            reason=refused.reason,
            error=refused.message,
        )
        await context.abort(refused.code, refused.message)
        raise AssertionError("context.abort() returned")  # it always raises

    async def denied(self, context: Context, method: str, exc: NoIdentity) -> NoReturn:
        log.info("workload.no_identity", method=method, selectors=sorted(map(str, exc.selectors)))
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, NO_IDENTITY)

    def observe(self, method: str, started: float, code: grpc.StatusCode) -> None:
        self._metrics.observe_rpc(method, code.name, time.perf_counter() - started)

    # --- streams --------------------------------------------------------------------

    async def _stream(
        self,
        context: Context,
        method: str,
        encodings: SharedEncodings,
        on_send: Callable[[Encoded], None] = lambda _message: None,
    ) -> None:
        """Serve `encodings` to the caller itself, attested once (see `serve_stream`).

        Every later send first re-checks that the attested process still holds the stream:
        otherwise rotated SVIDs would flow to whoever inherited the fd.
        """
        started = time.perf_counter()
        creds, selectors = await self.authenticate(context, method)

        async def confirm() -> None:
            await self.require_same_process(context, method, creds, "while streaming")

        await self.serve_stream(
            context, method, started, selectors, encodings, confirm, on_send, caller_pid=creds.pid
        )

    async def serve_stream(
        self,
        context: Context,
        method: str,
        started: float,
        selectors: frozenset[Selector],
        encodings: SharedEncodings,
        before_send: Callable[[], Awaitable[None]],
        on_send: Callable[[Encoded], None] = lambda _message: None,
        *,
        caller_pid: int,
        exits: PidFd | None = None,
    ) -> None:
        """Send the message for `selectors` at once and after every relevant change, until
        cancelled. The one stream loop: the Workload API's streams and those of the APIs that
        act on behalf of a workload (Delegated Identity, Broker) all run it.

        `encodings` gives the message (None: nothing to send yet), encoded once for every
        stream with the same selectors, and when it goes stale by itself (an SVID expiring),
        so the stream re-checks then even without a change.
        `before_send` runs before each send and aborts the call when it must not be answered;
        `caller_pid` (who holds the stream) is for the log.
        With `exits` (the pidfd of a workload named by reference) it also runs whenever that
        process exits, which the pidfd reports by turning readable: the stream ends then,
        not at the next change.

        A coroutine writing with ``context.write``, not an async generator: trio (guest mode)
        keeps the id of every async generator first iterated on the asyncio side and
        forgets it only if the generator is garbage-collected unfinished, so each stream
        that ended (cancelled by its client) would leave an id behind for good.
        """
        subscriber = StreamSubscriber(selectors)
        self._cache.subscribe(subscriber)
        loop = asyncio.get_running_loop()
        if exits is not None:
            pidfd = exits.fd

            def exited() -> None:
                loop.remove_reader(pidfd)  # once: it stays readable, and a send may be pending
                subscriber.wake()

            loop.add_reader(pidfd, exited)
        self._metrics.open_streams.inc()
        last: bytes | None = None
        try:
            while True:
                subscriber.event.clear()
                if exits is not None:
                    await before_send()
                try:
                    message, stale_at = encodings.get(selectors, _now(), self._cache.generation)
                except NoIdentity as exc:
                    await self.denied(context, method, exc)
                except SvidsExpired as exc:
                    log.warning("workload.svids_expired", method=method, pid=caller_pid)
                    await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
                if message is not None and message.data != last:
                    if exits is None:
                        await before_send()
                    if last is None:
                        self.observe(method, started, grpc.StatusCode.OK)
                    last = message.data
                    on_send(message)
                    await context.write(message)  # its bytes, as workload_wire passes them
                await subscriber.woken_or_stale(stale_at)
        finally:
            if exits is not None and not exits.closed:
                loop.remove_reader(exits.fd)
            self._metrics.open_streams.dec()
            self._cache.unsubscribe(subscriber)

    def _x509_message(
        self, selectors: frozenset[Selector], now: datetime
    ) -> tuple[pb.X509SVIDResponse | None, datetime | None]:
        view = x509_view(self._cache, selectors, now)
        stale_at = min((r.timing.not_after for r in view.served), default=None)
        if not view.response.svids:
            return None, stale_at  # identities exist but are still being signed
        return view.response, stale_at

    def _x509_bundles_message(
        self, selectors: frozenset[Selector], now: datetime
    ) -> tuple[pb.X509BundlesResponse | None, None]:
        bundles = x509_bundles(self._cache, selectors, now)
        return (pb.X509BundlesResponse(bundles=bundles) if bundles else None), None

    def _jwt_bundles_message(
        self, selectors: frozenset[Selector], now: datetime
    ) -> tuple[pb.JWTBundlesResponse | None, None]:
        bundles = jwt_bundles(self._cache, selectors, now)
        return (pb.JWTBundlesResponse(bundles=bundles) if bundles else None), None

    async def FetchX509SVID(self, request: pb.X509SVIDRequest, context: Context) -> None:
        def served(message: Encoded) -> None:
            self._metrics.served("x509", message.count)

        await self._stream(context, "FetchX509SVID", self._x509_encodings, served)

    async def FetchX509Bundles(self, request: pb.X509BundlesRequest, context: Context) -> None:
        await self._stream(context, "FetchX509Bundles", self._x509_bundle_encodings)

    async def FetchJWTBundles(self, request: pb.JWTBundlesRequest, context: Context) -> None:
        await self._stream(context, "FetchJWTBundles", self._jwt_bundle_encodings)

    async def FetchWITSVID(self, request: pb.WITSVIDRequest, context: Context) -> None:
        def build(
            selectors: frozenset[Selector], now: datetime
        ) -> tuple[pb.WITSVIDResponse | None, datetime | None]:
            view = wit_view(self._cache, selectors, now, request.spiffe_id)
            self._wit.request(view.due)
            retries = [self._wit.retry_at(entry.id) for entry, _ in view.due]
            # A retry time already past belongs to a request now in flight: its answer wakes
            # the stream through the cache, so waiting on the past time would only spin.
            times = [t for t in (view.stale_at, *retries) if t is not None and t > now]
            return (view.response if view.response.svids else None), min(times, default=None)

        def served(message: Encoded) -> None:
            self._metrics.served("wit", message.count)

        # Per call: the stream's message depends on the request's spiffe_id too.
        encodings = SharedEncodings(build, _svid_count)
        await self._stream(context, "FetchWITSVID", encodings, served)

    async def FetchWITBundles(self, request: pb.WITBundlesRequest, context: Context) -> None:
        def build(
            selectors: frozenset[Selector], now: datetime
        ) -> tuple[pb.WITBundlesResponse, None]:
            # Always a message: a trust domain without WIT keys is an empty map, not silence.
            return pb.WITBundlesResponse(bundles=wit_bundles(self._cache, selectors, now)), None

        await self._stream(context, "FetchWITBundles", SharedEncodings(build))

    # --- unary ----------------------------------------------------------------------

    async def FetchJWTSVID(
        self, request: pb.JWTSVIDRequest, context: Context
    ) -> pb.JWTSVIDResponse:
        started = time.perf_counter()
        creds, selectors = await self.authenticate(context, "FetchJWTSVID")
        try:
            audience = frozenset(self.audience_limits.check(request.audience))
        except InvalidAudience as exc:
            refuse(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            return pb.JWTSVIDResponse()
        try:
            targets = named_targets(self._cache, selectors, _now(), request.spiffe_id)
        except NoIdentity as exc:
            await self.denied(context, "FetchJWTSVID", exc)
        svids = [
            pb.JWTSVID(spiffe_id=str(entry.spiffe_id), svid=record.token, hint=entry.hint)
            for entry, record in await self.jwt_svids(context, targets, audience, creds.uid)
        ]
        self._metrics.served("jwt", len(svids))
        self.observe("FetchJWTSVID", started, grpc.StatusCode.OK)
        return pb.JWTSVIDResponse(svids=svids)

    async def jwt_svids(
        self, context: Context, targets: list[Entry], audience: frozenset[str], uid: int
    ) -> list[tuple[Entry, JwtSvidRecord]]:
        """A JWT-SVID for each of `targets` (cached or minted, on `uid`'s budget), or the
        call aborted: RESOURCE_EXHAUSTED over budget, UNAVAILABLE when none can be had."""
        minted = []
        for entry in targets:
            try:
                record = await self._jwt.jwt_svid(entry, audience, uid)
            except JwtRateLimited as exc:
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
            except JwtUnavailable as exc:
                log.warning("workload.jwt_unavailable", entry_id=entry.id, error=str(exc))
                await context.abort(grpc.StatusCode.UNAVAILABLE, f"could not mint JWT-SVID: {exc}")
            minted.append((entry, record))
        return minted

    async def ValidateJWTSVID(
        self, request: pb.ValidateJWTSVIDRequest, context: Context
    ) -> pb.ValidateJWTSVIDResponse:
        started = time.perf_counter()
        _, selectors = await self.authenticate(context, "ValidateJWTSVID")
        if not request.audience:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "audience must be specified")
        if not request.svid:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "svid must be specified")
        try:
            jwt = self._validator.validate(
                request.svid, self._trusted_bundles(selectors), request.audience, _now()
            )
        except InvalidJwtSvid as exc:
            self.observe("ValidateJWTSVID", started, grpc.StatusCode.INVALID_ARGUMENT)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        claims = Struct()
        claims.update(dict(jwt.claims))
        self.observe("ValidateJWTSVID", started, grpc.StatusCode.OK)
        return pb.ValidateJWTSVIDResponse(spiffe_id=str(jwt.spiffe_id), claims=claims)

    def _trusted_bundles(self, selectors: frozenset[Selector]) -> BundleSet:
        """The local bundle plus federated ones of the caller's entries, as SPIRE does.

        A caller without an identity may still validate tokens of its own trust domain.
        """
        view = self._cache.bundles
        if view is None:
            return BundleSet()
        bundles = [view.local]
        wanted = {
            td for e in self._cache.entitled(selectors, time.time()) for td in e.federates_with
        }
        bundles += [b for td, b in view.federated.items() if td in wanted]
        return BundleSet.of(bundles)
