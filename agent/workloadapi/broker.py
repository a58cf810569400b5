"""The SPIFFE Broker API (`spiffe.broker.API`), on its own socket.

A broker names one workload per call by a reference and gets exactly what the Workload API
would serve that workload: the same views (insignia.agent.workloadapi.views) over the same
cache, streamed by the same loop (`WorkloadApi.serve_stream`), so every message is the
workload's full state and nobody else's. The broker passes the Workload API's gate and must be
on `broker_api.authorized_brokers` (insignia.agent.workloadapi.on_behalf).

The spec's rules, where they are met:
- the security header `broker.spiffe.io: true`, else INVALID_ARGUMENT (Broker Endpoint §3);
- a missing reference, one of a type we do not resolve (only `WorkloadPIDReference`), or a pid
  that cannot be one: INVALID_ARGUMENT (§3.1.1, §3.1.4, §4.8);
- a pid naming no process: NOT_FOUND; a workload entitled to nothing: PERMISSION_DENIED (§4.8);
- the pid is pinned by a pidfd and attested by the agent itself (§3.1.1), and a stream ends
  with NOT_FOUND as soon as that process exits, which its pidfd reports (§4.9);
- the first message goes out as soon as it exists (§4.4).

The Broker API's messages have the Workload API's field numbers and types, message for message
(tests/unit/agent/test_broker_wire.py holds them to it), so a view is re-read as its broker twin
rather than copied field by field.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any, NoReturn, TypeVar

import grpc
import grpc.aio
from google.protobuf.message import DecodeError, Message
from insignia_proto import brokerapi_pb2 as pb

from insignia.agent.workloadapi.on_behalf import Audit, OnBehalf
from insignia.agent.workloadapi.rpcs import Context
from insignia.agent.workloadapi.shared import Build, SharedEncodings
from insignia.agent.workloadapi.views import (
    NoIdentity,
    jwt_bundles,
    named_targets,
    x509_bundles,
    x509_view,
)
from insignia.daemon.peercred.credentials import PeerCredentials
from insignia.jwtsvid import InvalidAudience
from insignia.selectors import Selector
from insignia.spiffeid import InvalidSpiffeId, SpiffeId
from insignia.workload_wire import serialize_stream_message

SERVICE = "spiffe.broker.API"
API_NAME = "broker"
SECURITY_HEADER_KEY = "broker.spiffe.io"
HEADER_MISSING = f"security header {SECURITY_HEADER_KEY}: true missing from request"

T = TypeVar("T", bound=Message)


def as_broker(message: Message, twin: type[T]) -> T:
    """`message` (a Workload API view) as its Broker API twin: the same fields, numbers and
    types, so the bytes are the same."""
    return twin.FromString(message.SerializeToString())


class BadReference(Exception):
    """A reference the agent cannot resolve: INVALID_ARGUMENT with this message."""


def reference_pid(request: Any) -> int:
    """The pid a request's `WorkloadReference` names, or BadReference."""
    if not request.HasField("reference") or not request.reference.HasField("reference"):
        raise BadReference("the request carries no workload reference")
    packed = request.reference.reference
    if not packed.Is(pb.WorkloadPIDReference.DESCRIPTOR):
        raise BadReference(
            f"workload reference type {packed.type_url!r} is not supported; this agent "
            f"resolves type.googleapis.com/{pb.WorkloadPIDReference.DESCRIPTOR.full_name}"
        )
    reference = pb.WorkloadPIDReference()
    try:
        packed.Unpack(reference)
    except DecodeError as exc:
        raise BadReference(f"malformed WorkloadPIDReference: {exc}") from None
    if reference.pid <= 0:
        raise BadReference(f"pid must be a positive integer, not {reference.pid}")
    return int(reference.pid)


class BrokerApi:
    def __init__(self, core: OnBehalf) -> None:
        self._core = core
        self._cache = core.cache
        self._api = core.api

    async def _admit(
        self, context: Context, audit: Audit, request: Any
    ) -> tuple[PeerCredentials, int]:
        """(the broker, the referenced pid), once the header, the broker and the reference
        have passed."""
        metadata = context.invocation_metadata() or ()
        if not any(k == SECURITY_HEADER_KEY and v == "true" for k, v in metadata):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, HEADER_MISSING)
        broker, _ = await self._core.authorize(context, audit)
        try:
            return broker, reference_pid(request)
        except BadReference as exc:
            await self._invalid(context, audit, str(exc))

    async def _invalid(self, context: Context, audit: Audit, message: str) -> NoReturn:
        audit.target = audit.target or "invalid reference"
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, message)
        raise AssertionError("context.abort() returned")  # it always raises

    async def _stream(self, request: Any, context: Context, method: str, build: Build) -> None:
        started = time.perf_counter()
        async with self._core.audited(context, method) as audit:
            broker, pid = await self._admit(context, audit, request)
            async with self._core.referenced(context, audit, pid) as found:
                audit.line("granted")
                await self._api.serve_stream(
                    context,
                    method,
                    started,
                    found.selectors,
                    SharedEncodings(build),  # per call: one workload's stream
                    self._core.confirmer(context, found.process),
                    caller_pid=broker.pid,
                    exits=found.process.pidfd,
                )

    async def SubscribeToX509SVID(
        self, request: pb.SubscribeToX509SVIDRequest, context: Context
    ) -> None:
        def build(
            selectors: frozenset[Selector], now: datetime
        ) -> tuple[pb.SubscribeToX509SVIDResponse | None, datetime | None]:
            view = x509_view(self._cache, selectors, now)
            stale_at = min((r.timing.not_after for r in view.served), default=None)
            if not view.response.svids:
                return None, stale_at  # identities exist but are still being signed
            return as_broker(view.response, pb.SubscribeToX509SVIDResponse), stale_at

        await self._stream(request, context, "SubscribeToX509SVID", build)

    async def SubscribeToX509Bundles(
        self, request: pb.SubscribeToX509BundlesRequest, context: Context
    ) -> None:
        def build(
            selectors: frozenset[Selector], now: datetime
        ) -> tuple[pb.SubscribeToX509BundlesResponse | None, None]:
            bundles = x509_bundles(self._cache, selectors, now)
            return (pb.SubscribeToX509BundlesResponse(bundles=bundles) if bundles else None), None

        await self._stream(request, context, "SubscribeToX509Bundles", build)

    async def SubscribeToJWTBundles(
        self, request: pb.SubscribeToJWTBundlesRequest, context: Context
    ) -> None:
        def build(
            selectors: frozenset[Selector], now: datetime
        ) -> tuple[pb.SubscribeToJWTBundlesResponse | None, None]:
            bundles = jwt_bundles(self._cache, selectors, now)
            return (pb.SubscribeToJWTBundlesResponse(bundles=bundles) if bundles else None), None

        await self._stream(request, context, "SubscribeToJWTBundles", build)

    async def FetchJWTSVID(
        self, request: pb.FetchJWTSVIDRequest, context: Context
    ) -> pb.FetchJWTSVIDResponse:
        method = "FetchJWTSVID"
        async with self._core.audited(context, method) as audit:
            broker, pid = await self._admit(context, audit, request)
            if not request.audience:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "audience is required")
            try:
                audience = frozenset(self._api.audience_limits.check(request.audience))
                if request.spiffe_id:
                    SpiffeId.parse(request.spiffe_id)
            except (InvalidAudience, InvalidSpiffeId) as exc:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            async with self._core.referenced(context, audit, pid) as found:
                try:
                    targets = named_targets(
                        self._cache, found.selectors, self._core.now(), request.spiffe_id
                    )
                except NoIdentity as exc:
                    await self._api.denied(context, method, exc)
                minted = await self._api.jwt_svids(context, targets, audience, broker.uid)
                await self._core.confirm(context, found.process)
            return pb.FetchJWTSVIDResponse(
                svids=[
                    pb.JWTSVID(spiffe_id=str(entry.spiffe_id), svid=record.token, hint=entry.hint)
                    for entry, record in minted
                ]
            )


def broker_api_handler(servicer: BrokerApi) -> grpc.GenericRpcHandler[Any, Any]:
    """The service at the spec's path, for the Broker endpoint's grpc.aio server."""
    stream = grpc.unary_stream_rpc_method_handler
    methods = {
        "SubscribeToX509SVID": stream(
            servicer.SubscribeToX509SVID,
            request_deserializer=pb.SubscribeToX509SVIDRequest.FromString,
            response_serializer=serialize_stream_message,
        ),
        "SubscribeToX509Bundles": stream(
            servicer.SubscribeToX509Bundles,
            request_deserializer=pb.SubscribeToX509BundlesRequest.FromString,
            response_serializer=serialize_stream_message,
        ),
        "FetchJWTSVID": grpc.unary_unary_rpc_method_handler(
            servicer.FetchJWTSVID,
            request_deserializer=pb.FetchJWTSVIDRequest.FromString,
            response_serializer=pb.FetchJWTSVIDResponse.SerializeToString,
        ),
        "SubscribeToJWTBundles": stream(
            servicer.SubscribeToJWTBundles,
            request_deserializer=pb.SubscribeToJWTBundlesRequest.FromString,
            response_serializer=serialize_stream_message,
        ),
    }
    return grpc.method_handlers_generic_handler(SERVICE, methods)
