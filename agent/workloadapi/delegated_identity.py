"""SPIRE's Delegated Identity API (`spire.api.agent.delegatedidentity.v1`), on the admin socket.

A delegate (a node proxy such as Cilium's or a node-wide Envoy) names a workload by its
selectors or by its pid and gets that workload's identities, exactly what the Workload API
would serve it: the same cache, views and stream loop (insignia.agent.workloadapi.rpcs), behind
the allow-list of insignia.agent.workloadapi.on_behalf. As SPIRE's agent does, a subscription
whose selectors match no entry stays open with an empty message until one does, and the
bundle streams carry every trust domain the agent holds, keyed by trust domain ID.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any

import grpc
import grpc.aio
from cryptography.hazmat.primitives.serialization import Encoding
from insignia_proto import delegatedidentity_pb2 as pb
from insignia_proto import spire_jwtsvid_pb2 as jwt_types
from insignia_proto import spire_selector_pb2 as selector_types
from insignia_proto import spire_spiffeid_pb2 as id_types
from insignia_proto import spire_x509svid_pb2 as x509_types

from insignia.agent.workloadapi.on_behalf import Audit, OnBehalf, describe_selectors
from insignia.agent.workloadapi.rpcs import Context
from insignia.agent.workloadapi.shared import Build, SharedEncodings
from insignia.agent.workloadapi.views import NoIdentity, named_targets, x509_view
from insignia.bundle import Bundle
from insignia.jwtsvid import InvalidAudience
from insignia.selectors import InvalidSelector, Selector
from insignia.spiffeid import SpiffeId
from insignia.workload_wire import serialize_stream_message
from insignia.x509svid import parse_chain_der

SERVICE = "spire.api.agent.delegatedidentity.v1.DelegatedIdentity"
API_NAME = "delegated_identity"


def spire_id(spiffe_id: SpiffeId) -> id_types.SPIFFEID:
    return id_types.SPIFFEID(trust_domain=spiffe_id.trust_domain.name, path=spiffe_id.path)


def parse_selectors(selectors: Sequence[selector_types.Selector]) -> frozenset[Selector]:
    """The request's selectors, each validated as a Workload API selector (InvalidSelector)."""
    return frozenset(Selector(s.type, s.value) for s in selectors)


class DelegatedIdentity:
    def __init__(self, core: OnBehalf) -> None:
        self._core = core
        self._cache = core.cache
        self._api = core.api

    @contextlib.asynccontextmanager
    async def _subject(
        self, context: Context, audit: Audit, selectors: Sequence[Any], pid: int
    ) -> AsyncIterator[tuple[frozenset[Selector], Callable[[], Awaitable[None]], Any]]:
        """(selectors, check before each send, pidfd to watch or None) of the named workload."""
        if selectors and pid:
            audit.target = "selectors+pid"
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "selectors and pid are mutually exclusive"
            )
        if not selectors and not pid:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "selectors or pid is required")
        if selectors:
            try:
                parsed = parse_selectors(selectors)
            except InvalidSelector as exc:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            audit.target = f"selectors:{describe_selectors(parsed)}"

            async def nothing() -> None:
                return None

            yield parsed, nothing, None
            return
        async with self._core.referenced(context, audit, pid) as found:
            yield found.selectors, self._core.confirmer(context, found.process), found.process.pidfd

    def _x509_message(
        self, selectors: frozenset[Selector], now: datetime
    ) -> tuple[pb.SubscribeToX509SVIDsResponse | None, datetime | None]:
        try:
            view = x509_view(self._cache, selectors, now)
        except NoIdentity:
            return pb.SubscribeToX509SVIDsResponse(), None  # open, empty, as SPIRE's agent
        stale_at = min((r.timing.not_after for r in view.served), default=None)
        if not view.response.svids:
            return None, stale_at  # identities exist but are still being signed
        svids = [
            pb.X509SVIDWithKey(
                x509_svid=x509_types.X509SVID(
                    cert_chain=[c.public_bytes(Encoding.DER) for c in parse_chain_der(r.chain_der)],
                    id=spire_id(r.spiffe_id),
                    expires_at=int(r.timing.not_after.timestamp()),
                    hint=served.hint,
                ),
                x509_svid_key=r.key_der,
            )
            for r, served in zip(view.served, view.response.svids, strict=True)
        ]
        federates_with = sorted(
            {
                td.name
                for e in self._cache.entitled(selectors, now.timestamp())
                for td in e.federates_with
            }
        )
        return pb.SubscribeToX509SVIDsResponse(
            x509_svids=svids, federates_with=federates_with
        ), stale_at

    async def SubscribeToX509SVIDs(
        self, request: pb.SubscribeToX509SVIDsRequest, context: Context
    ) -> None:
        method = "SubscribeToX509SVIDs"
        started = time.perf_counter()
        async with self._core.audited(context, method) as audit:
            caller, _ = await self._core.authorize(context, audit)
            async with self._subject(context, audit, request.selectors, request.pid) as (
                selectors,
                confirm,
                exits,
            ):
                audit.line("granted")
                await self._api.serve_stream(
                    context,
                    method,
                    started,
                    selectors,
                    SharedEncodings(self._x509_message),  # per call: one workload's stream
                    confirm,
                    caller_pid=caller.pid,
                    exits=exits,
                )

    def _all_bundles(self, encode: Callable[[Bundle], bytes]) -> dict[str, bytes]:
        view = self._cache.bundles
        if view is None:
            return {}
        bundles = {self._cache.trust_domain.id_string(): encode(view.local)}
        for td, bundle in view.federated.items():
            bundles[td.id_string()] = encode(bundle)
        return bundles

    async def _bundles(self, context: Context, method: str, build: Build) -> None:
        started = time.perf_counter()
        async with self._core.audited(context, method) as audit:
            caller, selectors = await self._core.authorize(context, audit)
            audit.target = "bundles"
            audit.line("granted")

            async def still_caller() -> None:
                await self._api.require_same_process(context, method, caller, "while streaming")

            await self._api.serve_stream(
                context,
                method,
                started,
                selectors,
                SharedEncodings(build),
                still_caller,
                caller_pid=caller.pid,
            )

    async def SubscribeToX509Bundles(
        self, request: pb.SubscribeToX509BundlesRequest, context: Context
    ) -> None:
        def build(
            _selectors: frozenset[Selector], _now: datetime
        ) -> tuple[pb.SubscribeToX509BundlesResponse | None, None]:
            bundles = self._all_bundles(Bundle.x509_der)
            message = pb.SubscribeToX509BundlesResponse(ca_certificates=bundles)
            return (message if bundles else None), None

        await self._bundles(context, "SubscribeToX509Bundles", build)

    async def SubscribeToJWTBundles(
        self, request: pb.SubscribeToJWTBundlesRequest, context: Context
    ) -> None:
        def build(
            _selectors: frozenset[Selector], _now: datetime
        ) -> tuple[pb.SubscribeToJWTBundlesResponse | None, None]:
            bundles = self._all_bundles(Bundle.jwks)
            return (pb.SubscribeToJWTBundlesResponse(bundles=bundles) if bundles else None), None

        await self._bundles(context, "SubscribeToJWTBundles", build)

    async def FetchJWTSVIDs(
        self, request: pb.FetchJWTSVIDsRequest, context: Context
    ) -> pb.FetchJWTSVIDsResponse:
        method = "FetchJWTSVIDs"
        async with self._core.audited(context, method) as audit:
            caller, _ = await self._core.authorize(context, audit)
            if not request.audience:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "audience is required")
            try:
                audience = frozenset(self._api.audience_limits.check(request.audience))
            except InvalidAudience as exc:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            async with self._subject(context, audit, request.selectors, request.pid) as (
                selectors,
                confirm,
                _exits,
            ):
                try:
                    targets = named_targets(self._cache, selectors, self._core.now(), "")
                except NoIdentity as exc:
                    await self._api.denied(context, method, exc)
                minted = await self._api.jwt_svids(context, targets, audience, caller.uid)
                await confirm()  # the pid still names the process the tokens were minted for
            return pb.FetchJWTSVIDsResponse(
                svids=[
                    jwt_types.JWTSVID(
                        token=record.token,
                        id=spire_id(record.spiffe_id),
                        expires_at=int(record.expires_at.timestamp()),
                        issued_at=int(record.issued_at.timestamp()),
                        hint=entry.hint,
                    )
                    for entry, record in minted
                ]
            )


def delegated_identity_handler(servicer: DelegatedIdentity) -> grpc.GenericRpcHandler[Any, Any]:
    """The service at SPIRE's path, for the admin socket's grpc.aio server."""
    stream = grpc.unary_stream_rpc_method_handler
    methods = {
        "SubscribeToX509SVIDs": stream(
            servicer.SubscribeToX509SVIDs,
            request_deserializer=pb.SubscribeToX509SVIDsRequest.FromString,
            response_serializer=serialize_stream_message,
        ),
        "SubscribeToX509Bundles": stream(
            servicer.SubscribeToX509Bundles,
            request_deserializer=pb.SubscribeToX509BundlesRequest.FromString,
            response_serializer=serialize_stream_message,
        ),
        "FetchJWTSVIDs": grpc.unary_unary_rpc_method_handler(
            servicer.FetchJWTSVIDs,
            request_deserializer=pb.FetchJWTSVIDsRequest.FromString,
            response_serializer=pb.FetchJWTSVIDsResponse.SerializeToString,
        ),
        "SubscribeToJWTBundles": stream(
            servicer.SubscribeToJWTBundles,
            request_deserializer=pb.SubscribeToJWTBundlesRequest.FromString,
            response_serializer=serialize_stream_message,
        ),
    }
    return grpc.method_handlers_generic_handler(SERVICE, methods)
