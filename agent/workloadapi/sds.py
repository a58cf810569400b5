"""Envoy's Secret Discovery Service (v3) on the Workload API socket.

The same gate as the Workload API (insignia.agent.workloadapi.rpcs.WorkloadApi.authenticate:
kernel credentials, attestation, the same-process check before every send), the same cache
and the same SVIDs: a proxy gets its own process's identities and nothing else. Streams
answer each request, and push again whenever the cache changes what they hold (rotation,
entries, bundles), following the xDS rules kept in `sds_protocol`.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any, NoReturn, Protocol

import grpc
import grpc.aio
from envoy.service.discovery.v3 import discovery_pb2

from insignia.agent.cache.store import Cache
from insignia.agent.metrics import AgentMetrics
from insignia.agent.workloadapi.rpcs import StreamSubscriber, WorkloadApi
from insignia.agent.workloadapi.sds_protocol import DeltaStream, Heard, SotwStream, WrongType
from insignia.agent.workloadapi.sds_secrets import Resolved, resolve
from insignia.agent.workloadapi.sds_service import SDS_SERVICE, SdsNames
from insignia.agent.workloadapi.views import NoIdentity, SvidsExpired, x509_bundles, x509_view
from insignia.daemon.logs import get_logger
from insignia.selectors import Selector

log = get_logger(__name__)

Context = grpc.aio.ServicerContext[Any, Any]
# What context.read() returns once the client has half-closed (absent from grpc-stubs).
_EOF: object = grpc.aio.EOF  # type: ignore[attr-defined]


class _Stream(Protocol):
    """SotwStream or DeltaStream (insignia.agent.workloadapi.sds_protocol)."""

    @property
    def requested(self) -> tuple[str, ...] | None: ...

    def hear(self, request: Any) -> Heard: ...

    def respond(self, secrets: tuple[Any, ...]) -> Any: ...


def _now() -> datetime:
    return datetime.now(UTC)


class SecretDiscovery:
    """`StreamSecrets`, `DeltaSecrets` and `FetchSecrets` for the caller's own identities."""

    def __init__(
        self, api: WorkloadApi, cache: Cache, metrics: AgentMetrics, names: SdsNames
    ) -> None:
        self._api = api
        self._cache = cache
        self._metrics = metrics
        self._names = names

    def _resolve(
        self, selectors: frozenset[Selector], requested: tuple[str, ...], now: datetime
    ) -> tuple[Resolved | None, datetime | None]:
        """The secrets for `requested` and when they go stale; None while the caller's
        SVIDs are still being signed. NoIdentity / SvidsExpired as the Workload API."""
        view = x509_view(self._cache, selectors, now)
        stale_at = min((r.timing.not_after for r in view.served), default=None)
        if not view.response.svids:
            return None, stale_at
        bundles = x509_bundles(self._cache, selectors, now)
        local = self._cache.trust_domain.id_string()
        return resolve(requested, view.response, bundles, local, self._names), stale_at

    async def _resolve_or_abort(
        self,
        context: Context,
        method: str,
        selectors: frozenset[Selector],
        requested: tuple[str, ...],
    ) -> tuple[Resolved | None, datetime | None]:
        try:
            return self._resolve(selectors, requested, _now())
        except NoIdentity as exc:
            await self._api.denied(context, method, exc)
        except SvidsExpired as exc:
            log.warning("sds.svids_expired", method=method)
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        raise AssertionError("context.abort() returned")

    async def _wrong_type(self, context: Context, exc: WrongType) -> NoReturn:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        raise AssertionError("context.abort() returned")

    async def FetchSecrets(
        self, request: discovery_pb2.DiscoveryRequest, context: Context
    ) -> discovery_pb2.DiscoveryResponse:
        started = time.perf_counter()
        _, selectors = await self._api.authenticate(context, "FetchSecrets", header=False)
        stream = SotwStream()
        try:
            stream.hear(request)
        except WrongType as exc:
            await self._wrong_type(context, exc)
        resolved, _ = await self._resolve_or_abort(
            context, "FetchSecrets", selectors, tuple(request.resource_names)
        )
        secrets = resolved.secrets if resolved is not None else ()
        self._log_unknown("FetchSecrets", resolved, ())
        response = stream.respond(secrets)
        assert response is not None  # a first answer always goes out
        self._metrics.served("sds", len(secrets))
        self._api.observe("FetchSecrets", started, grpc.StatusCode.OK)
        return response

    async def StreamSecrets(self, request_iterator: object, context: Context) -> None:
        await self._serve(context, "StreamSecrets", SotwStream())

    async def DeltaSecrets(self, request_iterator: object, context: Context) -> None:
        await self._serve(context, "DeltaSecrets", DeltaStream())

    async def _serve(self, context: Context, method: str, stream: _Stream) -> None:
        """Answer requests and push changes until the client goes. A coroutine using
        ``context.read``/``write`` (see rpcs.WorkloadApi._stream for why not a generator)."""
        started = time.perf_counter()
        creds, selectors = await self._api.authenticate(context, method, header=False)
        subscriber = StreamSubscriber(selectors)
        requests: asyncio.Queue[Any] = asyncio.Queue()

        async def read() -> None:
            while True:
                request = await context.read()
                await requests.put(request)
                subscriber.wake()
                if request is _EOF:
                    return

        self._cache.subscribe(subscriber)
        self._metrics.open_streams.inc()
        reader = asyncio.ensure_future(read())
        unknown: tuple[str, ...] = ()
        first = True
        try:
            while True:
                subscriber.event.clear()
                while not requests.empty():
                    request = requests.get_nowait()
                    if request is _EOF:
                        return
                    try:
                        heard = stream.hear(request)
                    except WrongType as exc:
                        await self._wrong_type(context, exc)
                    self._log_heard(method, creds.pid, heard, stream.requested)
                resolved, stale_at = None, None
                if stream.requested is not None:
                    resolved, stale_at = await self._resolve_or_abort(
                        context, method, selectors, stream.requested
                    )
                if resolved is not None:
                    if resolved.unknown != unknown:
                        self._log_unknown(method, resolved, unknown)
                        unknown = resolved.unknown
                    response = stream.respond(resolved.secrets)
                    if response is not None:
                        await self._api.require_same_process(
                            context, method, creds, "while streaming"
                        )
                        if first:
                            self._api.observe(method, started, grpc.StatusCode.OK)
                            first = False
                        self._metrics.served("sds", len(resolved.secrets))
                        await context.write(response)
                await subscriber.woken_or_stale(stale_at)
        finally:
            reader.cancel()
            self._metrics.open_streams.dec()
            self._cache.unsubscribe(subscriber)

    def _log_heard(
        self, method: str, pid: int, heard: Heard, names: tuple[str, ...] | None
    ) -> None:
        if heard.stale:
            log.debug("sds.stale_nonce_ignored", method=method, pid=pid)
        elif heard.nack is not None:
            log.warning(
                "sds.nack", method=method, pid=pid, names=list(names or ()), error=heard.nack
            )

    def _log_unknown(self, method: str, resolved: Resolved | None, before: tuple[str, ...]) -> None:
        if resolved is not None and resolved.unknown and resolved.unknown != before:
            log.info("sds.unknown_names", method=method, names=list(resolved.unknown))


def sds_handler(servicer: SecretDiscovery) -> grpc.GenericRpcHandler[Any, Any]:
    """The SDS service at Envoy's path, for the agent's grpc.aio server."""
    request = discovery_pb2.DiscoveryRequest.FromString
    response = discovery_pb2.DiscoveryResponse.SerializeToString
    methods = {
        "StreamSecrets": grpc.stream_stream_rpc_method_handler(
            servicer.StreamSecrets, request_deserializer=request, response_serializer=response
        ),
        "DeltaSecrets": grpc.stream_stream_rpc_method_handler(
            servicer.DeltaSecrets,
            request_deserializer=discovery_pb2.DeltaDiscoveryRequest.FromString,
            response_serializer=discovery_pb2.DeltaDiscoveryResponse.SerializeToString,
        ),
        "FetchSecrets": grpc.unary_unary_rpc_method_handler(
            servicer.FetchSecrets, request_deserializer=request, response_serializer=response
        ),
    }
    return grpc.method_handlers_generic_handler(SDS_SERVICE, methods)
