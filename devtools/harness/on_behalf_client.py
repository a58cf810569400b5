"""A Delegated Identity or Broker API client, run as its own process (so the agent attests it).

    on_behalf_client.py delegated SOCKET METHOD [--pid N | --selector type:value ...]
    on_behalf_client.py broker SOCKET METHOD --pid N [--type-url URL] [--no-header]

METHOD is an RPC of the API (SubscribeToX509SVIDs, FetchJWTSVIDs, ... / SubscribeToX509SVID,
...). Prints one JSON line per message received ({"event": "message", ...}: the SPIFFE IDs,
and for X.509 each leaf's serial and issuer key id), then {"event": "end", "code": ...} when
the call ends, so tests follow a stream as records (devtools.harness.workload_follower).
"""

from __future__ import annotations

import argparse
import json
import sys
import types
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from insignia_proto import brokerapi_pb2 as broker
from insignia_proto import delegatedidentity_pb2 as delegated
from insignia_proto import spire_selector_pb2 as selectors_pb

from insignia.x509svid import parse_chain_der


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(Encoding.DER)


def _leaf(der: bytes) -> dict[str, str]:
    cert = x509.load_der_x509_certificate(der)
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    return {
        "serial": format(cert.serial_number, "x"),
        "issuer_key": (aki.key_identifier or b"").hex(),
    }


def describe(message: Any) -> dict[str, Any]:
    """What a test checks of one message, as JSON."""
    if isinstance(message, delegated.SubscribeToX509SVIDsResponse):
        return {
            "spiffe_ids": [
                f"spiffe://{s.x509_svid.id.trust_domain}{s.x509_svid.id.path}"
                for s in message.x509_svids
            ],
            "leaves": [_leaf(s.x509_svid.cert_chain[0]) for s in message.x509_svids],
            "federates_with": list(message.federates_with),
        }
    if isinstance(message, broker.SubscribeToX509SVIDResponse):
        return {
            "spiffe_ids": [s.spiffe_id for s in message.svids],
            "leaves": [_leaf(_der(parse_chain_der(s.x509_svid)[0])) for s in message.svids],
            "federated": sorted(message.federated_bundles),
        }
    if isinstance(message, delegated.FetchJWTSVIDsResponse):
        return {"spiffe_ids": [f"spiffe://{s.id.trust_domain}{s.id.path}" for s in message.svids]}
    if isinstance(message, broker.FetchJWTSVIDResponse):
        return {"spiffe_ids": [s.spiffe_id for s in message.svids]}
    if isinstance(message, delegated.SubscribeToX509BundlesResponse):
        return {"bundles": sorted(message.ca_certificates)}
    return {"bundles": sorted(message.bundles)}


def delegated_request(method: str, args: argparse.Namespace) -> Any:
    chosen = [
        selectors_pb.Selector(type=t, value=v)
        for t, _, v in (s.partition(":") for s in args.selector)
    ]
    if method == "SubscribeToX509SVIDs":
        return delegated.SubscribeToX509SVIDsRequest(selectors=chosen, pid=args.pid or 0)
    if method == "FetchJWTSVIDs":
        return delegated.FetchJWTSVIDsRequest(
            audience=["test"], selectors=chosen, pid=args.pid or 0
        )
    return getattr(delegated, f"{method}Request")()


def broker_request(method: str, args: argparse.Namespace) -> Any:
    request = getattr(broker, f"{method}Request")()
    if args.pid is not None:
        request.reference.reference.Pack(broker.WorkloadPIDReference(pid=args.pid))
        if args.type_url:
            request.reference.reference.type_url = args.type_url
    if method == "FetchJWTSVID":
        request.audience.append("test")
    return request


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("api", choices=["delegated", "broker"])
    parser.add_argument("socket")
    parser.add_argument("method")
    parser.add_argument("--pid", type=int, default=None)
    parser.add_argument("--selector", action="append", default=[])
    parser.add_argument("--type-url", default="")
    parser.add_argument("--no-header", action="store_true")
    args = parser.parse_args()
    module: types.ModuleType
    if args.api == "delegated":
        service, module = "spire.api.agent.delegatedidentity.v1.DelegatedIdentity", delegated
        request = delegated_request(args.method, args)
        metadata: tuple[tuple[str, str], ...] = ()
    else:
        service, module = "spiffe.broker.API", broker
        request = broker_request(args.method, args)
        metadata = () if args.no_header else (("broker.spiffe.io", "true"),)
    response_type = getattr(module, f"{args.method}Response")
    path = f"/{service}/{args.method}"
    unary = args.method.startswith("Fetch")
    with grpc.insecure_channel(f"unix:{args.socket}") as channel:
        call = (channel.unary_unary if unary else channel.unary_stream)(
            path,
            request_serializer=type(request).SerializeToString,
            response_deserializer=response_type.FromString,
        )
        try:
            answers = (
                [call(request, metadata=metadata, timeout=120)]
                if unary
                else call(request, metadata=metadata, timeout=120)
            )
            for message in answers:
                print(json.dumps({"event": "message", **describe(message)}), flush=True)
            print(json.dumps({"event": "end", "code": "OK"}), flush=True)
        except grpc.RpcError as exc:
            print(
                json.dumps({"event": "end", "code": exc.code().name, "details": exc.details()}),
                flush=True,
            )
    sys.exit(0)


if __name__ == "__main__":
    main()
