"""The SPIFFE Workload API on the wire: exact service path, handlers and client calls.

Our messages live in the proto package ``insignia.workload`` so they can share a process
with py-spiffe's package-less copy (docs/design-notes.md §1). The generated stubs would therefore
serve ``/insignia.workload.SpiffeWorkloadAPI/...``; the public API is
``/SpiffeWorkloadAPI/...``. This module registers and calls the public paths; never use the
generated ``add_SpiffeWorkloadAPIServicer_to_server`` or ``SpiffeWorkloadAPIStub``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Coroutine
from typing import Any, Protocol, runtime_checkable

import grpc
import grpc.aio
from google.protobuf.message import Message
from insignia_proto import workload_pb2 as pb

WORKLOAD_SERVICE = "SpiffeWorkloadAPI"
FETCH_X509_SVID = f"/{WORKLOAD_SERVICE}/FetchX509SVID"
FETCH_X509_BUNDLES = f"/{WORKLOAD_SERVICE}/FetchX509Bundles"
FETCH_JWT_SVID = f"/{WORKLOAD_SERVICE}/FetchJWTSVID"
FETCH_JWT_BUNDLES = f"/{WORKLOAD_SERVICE}/FetchJWTBundles"
VALIDATE_JWT_SVID = f"/{WORKLOAD_SERVICE}/ValidateJWTSVID"
FETCH_WIT_SVID = f"/{WORKLOAD_SERVICE}/FetchWITSVID"
FETCH_WIT_BUNDLES = f"/{WORKLOAD_SERVICE}/FetchWITBundles"

# Every Workload API call carries this metadata; it proves the caller meant to reach a
# local Workload API (not a browser or proxy replaying a request), so servers require it.
SECURITY_HEADER_KEY = "workload.spiffe.io"
SECURITY_HEADER: tuple[tuple[str, str]] = ((SECURITY_HEADER_KEY, "true"),)


class HasEncoding(Protocol):
    """A stream message already serialised (the agent encodes one per identity set)."""

    @property
    def data(self) -> bytes: ...


class WorkloadApiServicer(Protocol):
    """The five Workload API methods as grpc.aio handlers (PascalCase, as the RPC names).

    A stream method is an async generator of messages, or a coroutine that sends them with
    ``context.write`` (the agent's: see insignia.agent.workloadapi.rpcs for why).
    """

    def FetchX509SVID(
        self,
        request: pb.X509SVIDRequest,
        context: grpc.aio.ServicerContext[pb.X509SVIDRequest, pb.X509SVIDResponse],
    ) -> AsyncIterator[pb.X509SVIDResponse] | Coroutine[Any, Any, None]: ...

    def FetchX509Bundles(
        self,
        request: pb.X509BundlesRequest,
        context: grpc.aio.ServicerContext[pb.X509BundlesRequest, pb.X509BundlesResponse],
    ) -> AsyncIterator[pb.X509BundlesResponse] | Coroutine[Any, Any, None]: ...

    async def FetchJWTSVID(
        self,
        request: pb.JWTSVIDRequest,
        context: grpc.aio.ServicerContext[pb.JWTSVIDRequest, pb.JWTSVIDResponse],
    ) -> pb.JWTSVIDResponse: ...

    def FetchJWTBundles(
        self,
        request: pb.JWTBundlesRequest,
        context: grpc.aio.ServicerContext[pb.JWTBundlesRequest, pb.JWTBundlesResponse],
    ) -> AsyncIterator[pb.JWTBundlesResponse] | Coroutine[Any, Any, None]: ...

    async def ValidateJWTSVID(
        self,
        request: pb.ValidateJWTSVIDRequest,
        context: grpc.aio.ServicerContext[pb.ValidateJWTSVIDRequest, pb.ValidateJWTSVIDResponse],
    ) -> pb.ValidateJWTSVIDResponse: ...


@runtime_checkable
class WitServicer(Protocol):
    """The WIT-SVID profile's two streams; a servicer without them answers UNIMPLEMENTED,
    as the spec asks of an endpoint that does not support the profile."""

    def FetchWITSVID(
        self,
        request: pb.WITSVIDRequest,
        context: grpc.aio.ServicerContext[pb.WITSVIDRequest, pb.WITSVIDResponse],
    ) -> AsyncIterator[pb.WITSVIDResponse] | Coroutine[Any, Any, None]: ...

    def FetchWITBundles(
        self,
        request: pb.WITBundlesRequest,
        context: grpc.aio.ServicerContext[pb.WITBundlesRequest, pb.WITBundlesResponse],
    ) -> AsyncIterator[pb.WITBundlesResponse] | Coroutine[Any, Any, None]: ...


def workload_api_handler(servicer: WorkloadApiServicer) -> grpc.GenericRpcHandler[Any, Any]:
    """A handler serving ``servicer`` under the exact public service name ``SpiffeWorkloadAPI``.

    Pass it to ``grpc.aio.Server.add_generic_rpc_handlers([...])``.
    """
    stream = grpc.unary_stream_rpc_method_handler
    unary = grpc.unary_unary_rpc_method_handler
    methods = {
        "FetchX509SVID": stream(
            servicer.FetchX509SVID,
            request_deserializer=pb.X509SVIDRequest.FromString,
            response_serializer=serialize_stream_message,
        ),
        "FetchX509Bundles": stream(
            servicer.FetchX509Bundles,
            request_deserializer=pb.X509BundlesRequest.FromString,
            response_serializer=serialize_stream_message,
        ),
        "FetchJWTSVID": unary(
            servicer.FetchJWTSVID,
            request_deserializer=pb.JWTSVIDRequest.FromString,
            response_serializer=pb.JWTSVIDResponse.SerializeToString,
        ),
        "FetchJWTBundles": stream(
            servicer.FetchJWTBundles,
            request_deserializer=pb.JWTBundlesRequest.FromString,
            response_serializer=serialize_stream_message,
        ),
        "ValidateJWTSVID": unary(
            servicer.ValidateJWTSVID,
            request_deserializer=pb.ValidateJWTSVIDRequest.FromString,
            response_serializer=pb.ValidateJWTSVIDResponse.SerializeToString,
        ),
    }
    if isinstance(servicer, WitServicer):
        methods["FetchWITSVID"] = stream(
            servicer.FetchWITSVID,
            request_deserializer=pb.WITSVIDRequest.FromString,
            response_serializer=serialize_stream_message,
        )
        methods["FetchWITBundles"] = stream(
            servicer.FetchWITBundles,
            request_deserializer=pb.WITBundlesRequest.FromString,
            response_serializer=serialize_stream_message,
        )
    return grpc.method_handlers_generic_handler(WORKLOAD_SERVICE, methods)


class WorkloadApiStub:
    """Client calls on a grpc.aio channel, at the public paths.

    Callers add ``metadata=SECURITY_HEADER`` to every call; the server rejects calls without it.
    """

    def __init__(self, channel: grpc.aio.Channel) -> None:
        ser = _serializer
        self.FetchX509SVID: grpc.aio.UnaryStreamMultiCallable[
            pb.X509SVIDRequest, pb.X509SVIDResponse
        ] = channel.unary_stream(FETCH_X509_SVID, ser, pb.X509SVIDResponse.FromString)
        self.FetchX509Bundles: grpc.aio.UnaryStreamMultiCallable[
            pb.X509BundlesRequest, pb.X509BundlesResponse
        ] = channel.unary_stream(FETCH_X509_BUNDLES, ser, pb.X509BundlesResponse.FromString)
        self.FetchJWTSVID: grpc.aio.UnaryUnaryMultiCallable[
            pb.JWTSVIDRequest, pb.JWTSVIDResponse
        ] = channel.unary_unary(FETCH_JWT_SVID, ser, pb.JWTSVIDResponse.FromString)
        self.FetchJWTBundles: grpc.aio.UnaryStreamMultiCallable[
            pb.JWTBundlesRequest, pb.JWTBundlesResponse
        ] = channel.unary_stream(FETCH_JWT_BUNDLES, ser, pb.JWTBundlesResponse.FromString)
        self.ValidateJWTSVID: grpc.aio.UnaryUnaryMultiCallable[
            pb.ValidateJWTSVIDRequest, pb.ValidateJWTSVIDResponse
        ] = channel.unary_unary(VALIDATE_JWT_SVID, ser, pb.ValidateJWTSVIDResponse.FromString)
        self.FetchWITSVID: grpc.aio.UnaryStreamMultiCallable[
            pb.WITSVIDRequest, pb.WITSVIDResponse
        ] = channel.unary_stream(FETCH_WIT_SVID, ser, pb.WITSVIDResponse.FromString)
        self.FetchWITBundles: grpc.aio.UnaryStreamMultiCallable[
            pb.WITBundlesRequest, pb.WITBundlesResponse
        ] = channel.unary_stream(FETCH_WIT_BUNDLES, ser, pb.WITBundlesResponse.FromString)


class WorkloadApiSyncStub:
    """The same calls on a blocking ``grpc.Channel`` (for threads and simple tools)."""

    def __init__(self, channel: grpc.Channel) -> None:
        ser = _serializer
        self.FetchX509SVID: grpc.UnaryStreamMultiCallable[
            pb.X509SVIDRequest, pb.X509SVIDResponse
        ] = channel.unary_stream(FETCH_X509_SVID, ser, pb.X509SVIDResponse.FromString)
        self.FetchX509Bundles: grpc.UnaryStreamMultiCallable[
            pb.X509BundlesRequest, pb.X509BundlesResponse
        ] = channel.unary_stream(FETCH_X509_BUNDLES, ser, pb.X509BundlesResponse.FromString)
        self.FetchJWTSVID: grpc.UnaryUnaryMultiCallable[pb.JWTSVIDRequest, pb.JWTSVIDResponse] = (
            channel.unary_unary(FETCH_JWT_SVID, ser, pb.JWTSVIDResponse.FromString)
        )
        self.FetchJWTBundles: grpc.UnaryStreamMultiCallable[
            pb.JWTBundlesRequest, pb.JWTBundlesResponse
        ] = channel.unary_stream(FETCH_JWT_BUNDLES, ser, pb.JWTBundlesResponse.FromString)
        self.ValidateJWTSVID: grpc.UnaryUnaryMultiCallable[
            pb.ValidateJWTSVIDRequest, pb.ValidateJWTSVIDResponse
        ] = channel.unary_unary(VALIDATE_JWT_SVID, ser, pb.ValidateJWTSVIDResponse.FromString)
        self.FetchWITSVID: grpc.UnaryStreamMultiCallable[pb.WITSVIDRequest, pb.WITSVIDResponse] = (
            channel.unary_stream(FETCH_WIT_SVID, ser, pb.WITSVIDResponse.FromString)
        )
        self.FetchWITBundles: grpc.UnaryStreamMultiCallable[
            pb.WITBundlesRequest, pb.WITBundlesResponse
        ] = channel.unary_stream(FETCH_WIT_BUNDLES, ser, pb.WITBundlesResponse.FromString)


def _serializer(message: Message) -> bytes:
    return message.SerializeToString()


def serialize_stream_message(message: Message | HasEncoding) -> bytes:
    """Stream responses: a message, or one a server encoded once for many streams (an object
    with its bytes in `data`), sent as those bytes."""
    if isinstance(message, Message):
        return message.SerializeToString()
    return message.data
