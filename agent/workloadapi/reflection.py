"""gRPC server reflection on the Workload API socket (Workload Endpoint spec §7: SHOULD).

Both reflection versions are served, `grpc.reflection.v1` and `grpc.reflection.v1alpha`
(grpcurl and grpc-go try v1 first), from one servicer: their messages are wire-identical.

Our Workload API messages live in the proto package `insignia.workload` (see
insignia/workload_wire.py), but the service on the wire is the package-less
`SpiffeWorkloadAPI` of the public workload.proto. Reflection must describe what is served, so
it answers from a private descriptor pool holding a package-less copy of our file: a client
that resolves `SpiffeWorkloadAPI` gets the public definition, and py-spiffe's own copy in the
default pool is never touched.

Envoy's SDS, served on the same socket (insignia.agent.workloadapi.sds), is listed too, from
xds-protos' files with every file they import, and with the types its responses pack in `Any`
(the Secret, the SPIFFE validator's config), so a reflecting client can decode what it gets.
Those files are large, so the pool is built on the first reflection call, as SDS's handler is;
so are grpc_reflection's servicer and protobuf's descriptor modules (3 MB of an idle agent's
RSS, for a service most nodes never call).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

import grpc

if TYPE_CHECKING:
    from google.protobuf import descriptor_pb2, descriptor_pool
    from google.protobuf.descriptor import FileDescriptor

from insignia.agent.workloadapi.first_call import LoadedOnFirstCall
from insignia.agent.workloadapi.sds_service import SDS_SERVICE
from insignia.workload_wire import WORKLOAD_SERVICE

V1ALPHA: Final = "grpc.reflection.v1alpha.ServerReflection"
V1: Final = "grpc.reflection.v1.ServerReflection"
_WORKLOAD_FILE: Final = "workload.proto"  # the public file's name
_V1_FILE: Final = "grpc/reflection/v1/reflection.proto"


def _copy(descriptor: FileDescriptor) -> descriptor_pb2.FileDescriptorProto:
    from google.protobuf import descriptor_pb2

    proto = descriptor_pb2.FileDescriptorProto()
    descriptor.CopyToProto(proto)
    return proto


def _repackaged(
    proto: descriptor_pb2.FileDescriptorProto, name: str, package: str
) -> descriptor_pb2.FileDescriptorProto:
    """`proto` moved to `package` (possibly none) under file name `name`, with every type
    reference inside it rewritten to match."""
    old = f".{proto.package}."
    new = f".{package}." if package else "."

    def fix(reference: str) -> str:
        return new + reference[len(old) :] if reference.startswith(old) else reference

    def fix_messages(messages: Any) -> None:
        for message in messages:
            for field in message.field:
                if field.HasField("type_name"):  # assigning "" would mark it set
                    field.type_name = fix(field.type_name)
            fix_messages(message.nested_type)

    proto.name = name
    if package:
        proto.package = package
    else:
        proto.ClearField("package")
    fix_messages(proto.message_type)
    for service in proto.service:
        for method in service.method:
            method.input_type = fix(method.input_type)
            method.output_type = fix(method.output_type)
    return proto


def _with_imports(*descriptors: FileDescriptor) -> list[FileDescriptor]:
    """`descriptors` and everything they import, each file once, imports first."""
    ordered: dict[str, FileDescriptor] = {}

    def visit(file: FileDescriptor) -> None:
        if file.name not in ordered:
            for dependency in file.dependencies:
                visit(dependency)
            ordered[file.name] = file

    for descriptor in descriptors:
        visit(descriptor)
    return list(ordered.values())


def reflection_pool() -> descriptor_pool.DescriptorPool:
    """The files reflection describes: the public Workload API, Envoy's SDS and both
    reflection versions."""
    # Imported here, not at the top: Envoy's modules cost megabytes, paid on first use only.
    from envoy.extensions.transport_sockets.tls.v3 import (
        secret_pb2,
        tls_spiffe_validator_config_pb2,
    )
    from envoy.service.secret.v3 import sds_pb2
    from google.protobuf import descriptor_pool, struct_pb2
    from grpc_reflection.v1alpha import reflection_pb2
    from insignia_proto import workload_pb2

    pool = descriptor_pool.DescriptorPool()
    sds = (sds_pb2.DESCRIPTOR, secret_pb2.DESCRIPTOR, tls_spiffe_validator_config_pb2.DESCRIPTOR)
    sds_files = [f for f in _with_imports(*sds) if f.name != struct_pb2.DESCRIPTOR.name]
    for proto in (
        _copy(struct_pb2.DESCRIPTOR),
        _repackaged(_copy(workload_pb2.DESCRIPTOR), _WORKLOAD_FILE, ""),
        *(_copy(f) for f in sds_files),
        _copy(reflection_pb2.DESCRIPTOR),
        _repackaged(_copy(reflection_pb2.DESCRIPTOR), _V1_FILE, "grpc.reflection.v1"),
    ):
        pool.Add(proto)
    return pool


def reflection_handlers() -> list[grpc.GenericRpcHandler[Any, Any]]:
    """Handlers for both reflection services, listing the Workload API, SDS and themselves;
    built on the first reflection call."""
    return [LoadedOnFirstCall((V1, V1ALPHA), _build_reflection_handlers)]


def _build_reflection_handlers() -> list[grpc.GenericRpcHandler[Any, Any]]:
    from grpc_reflection.v1alpha import reflection_pb2
    from grpc_reflection.v1alpha._async import ReflectionServicer

    services = (WORKLOAD_SERVICE, SDS_SERVICE, V1, V1ALPHA)
    servicer = ReflectionServicer(services, pool=reflection_pool())
    methods = {
        "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
            servicer.ServerReflectionInfo,
            request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
            response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
        )
    }
    return [grpc.method_handlers_generic_handler(name, methods) for name in (V1, V1ALPHA)]
