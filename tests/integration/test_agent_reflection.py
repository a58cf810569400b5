"""gRPC server reflection on the agent's Workload API socket (Workload Endpoint spec §7),
driven by grpcio-reflection's own client: list the services, resolve the Workload API and
Envoy's SDS from the descriptors reflection hands out, and call them with messages built
from those alone."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import descriptor_pool, message_factory
from grpc_reflection.v1alpha import reflection_pb2
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from devtools.harness.agent_clients import register
from devtools.harness.agent_process import AgentProcess
from devtools.harness.server_process import ServerProcess
from insignia.workload_wire import SECURITY_HEADER

pytestmark = [pytest.mark.integration, pytest.mark.root]

SDS = "envoy.service.secret.v3.SecretDiscoveryService"
SERVICES = [
    "SpiffeWorkloadAPI",
    SDS,
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
]


def test_reflection_describes_the_workload_api_well_enough_to_call_it(
    running_server: ServerProcess, running_agent: AgentProcess
) -> None:
    register(running_server, running_agent, "/reflected", "unix:uid:0")
    with grpc.insecure_channel(f"unix:{running_agent.socket_path}") as channel:
        database = ProtoReflectionDescriptorDatabase(channel)  # v1alpha
        assert sorted(database.get_services()) == SERVICES
        pool = descriptor_pool.DescriptorPool(database)
        service = pool.FindServiceByName("SpiffeWorkloadAPI")
        assert [m.name for m in service.methods] == [
            "FetchX509SVID", "FetchX509Bundles", "FetchJWTSVID", "FetchJWTBundles",
            "ValidateJWTSVID", "FetchWITSVID", "FetchWITBundles",
        ]  # fmt: skip
        method = service.methods_by_name["FetchX509SVID"]
        request_class = message_factory.GetMessageClass(method.input_type)
        response_class = message_factory.GetMessageClass(method.output_type)
        call = channel.unary_stream(
            "/SpiffeWorkloadAPI/FetchX509SVID",
            request_serializer=request_class.SerializeToString,
            response_deserializer=response_class.FromString,
        )
        stream = call(request_class(), metadata=SECURITY_HEADER, timeout=30)
        response = next(stream)
        stream.cancel()
        assert [svid.spiffe_id for svid in response.svids] == [
            f"spiffe://{running_server.trust_domain}/reflected"
        ]

        # v1: the same conversation under the newer service name (grpcurl tries it first).
        info = channel.stream_stream(
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        requests = [
            reflection_pb2.ServerReflectionRequest(list_services=""),
            reflection_pb2.ServerReflectionRequest(file_containing_symbol="SpiffeWorkloadAPI"),
        ]
        listed, described = list(info(iter(requests), timeout=30))
        assert sorted(s.name for s in listed.list_services_response.service) == SERVICES
        assert described.file_descriptor_response.file_descriptor_proto


def test_reflection_describes_sds_well_enough_to_call_it(
    running_server: ServerProcess, running_agent: AgentProcess
) -> None:
    register(running_server, running_agent, "/reflected", "unix:uid:0")
    with grpc.insecure_channel(f"unix:{running_agent.socket_path}") as channel:
        pool = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
        service = pool.FindServiceByName(SDS)
        assert sorted(m.name for m in service.methods) == [
            "DeltaSecrets", "FetchSecrets", "StreamSecrets",
        ]  # fmt: skip
        method = service.methods_by_name["FetchSecrets"]
        request_class = message_factory.GetMessageClass(method.input_type)
        response_class = message_factory.GetMessageClass(method.output_type)
        fetch = channel.unary_unary(
            f"/{SDS}/FetchSecrets",
            request_serializer=request_class.SerializeToString,
            response_deserializer=response_class.FromString,
        )
        response = fetch(request_class(resource_names=["default"]), timeout=30)
        secret_class = message_factory.GetMessageClass(
            pool.FindMessageTypeByName("envoy.extensions.transport_sockets.tls.v3.Secret")
        )
        secret = secret_class.FromString(response.resources[0].value)
        assert secret.name == "default"
        assert secret.tls_certificate.certificate_chain.inline_bytes.startswith(b"-----BEGIN")
