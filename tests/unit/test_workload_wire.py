"""Our Workload API stubs import beside py-spiffe and are wire-identical to its copy."""

from __future__ import annotations

import datetime
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import jwt
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from google.protobuf import struct_pb2
from insignia_proto import workload_pb2 as pb

from insignia.bundle import public_key_to_jwk
from insignia.daemon import runtime
from insignia.daemon.runtime import call_asyncio
from insignia.workload_wire import SECURITY_HEADER_KEY, WORKLOAD_SERVICE, workload_api_handler

IMPORT_BOTH = """
import {first}
import {second}
import insignia.workload_wire
from google.protobuf import descriptor_pb2, descriptor_pool
from spiffe._proto import workload_pb2 as theirs
from insignia_proto import workload_pb2 as ours

pool = descriptor_pool.Default()
assert pool.FindMessageTypeByName("X509SVIDRequest") is theirs.X509SVIDRequest.DESCRIPTOR
ours_request = pool.FindMessageTypeByName("insignia.workload.X509SVIDRequest")
assert ours_request is ours.X509SVIDRequest.DESCRIPTOR

def shape(file_descriptor, package):
    # Everything that reaches the wire: messages, field numbers/types/labels, map entries,
    # services and streaming flags; only the package prefix is taken out.
    proto = descriptor_pb2.FileDescriptorProto()
    file_descriptor.CopyToProto(proto)
    # The WIT-SVID profile (the spec's experimental branch) is not in py-spiffe's copy of
    # the stable file; test_wit_profile_matches_the_experimental_spec checks it.
    kept = [m for m in proto.message_type if not m.name.startswith("WIT")]
    del proto.message_type[:]
    proto.message_type.extend(kept)
    for service in proto.service:
        methods = [m for m in service.method if not m.name.startswith("FetchWIT")]
        del service.method[:]
        service.method.extend(methods)
    prefix = "." + package + "." if package else "."
    def strip(messages):
        for message in messages:
            for field in message.field:
                if field.type_name.startswith(prefix):
                    field.type_name = "." + field.type_name[len(prefix):]
            strip(message.nested_type)
    strip(proto.message_type)
    for service in proto.service:
        for method in service.method:
            method.input_type = "." + method.input_type[len(prefix):]
            method.output_type = "." + method.output_type[len(prefix):]
    return (
        sorted(m.SerializeToString(deterministic=True) for m in proto.message_type),
        [s.SerializeToString(deterministic=True) for s in proto.service],
        list(proto.dependency),
    )

assert shape(ours.DESCRIPTOR, "insignia.workload") == shape(theirs.DESCRIPTOR, ""), "shapes differ"
print("ok")
"""


def _python(script: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=timeout
    )


def test_imports_beside_py_spiffe_in_either_order_and_messages_match() -> None:
    for first, second in [
        ("spiffe.workloadapi.workload_api_client", "insignia_proto.workload_pb2"),
        ("insignia_proto.workload_pb2", "spiffe.workloadapi.workload_api_client"),
    ]:
        result = _python(IMPORT_BOTH.format(first=first, second=second))
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "ok"


def test_wit_profile_matches_the_experimental_spec() -> None:
    """The WIT-SVID messages and methods of spiffe/spiffe's experimental workloadapi.proto:
    names, field numbers and types (the key is a JWK string; bundles map to strings)."""
    fields = {
        name: [
            (f.name, f.number, f.type, f.is_repeated)
            for f in pb.DESCRIPTOR.message_types_by_name[name].fields
        ]
        for name in ("WITSVIDRequest", "WITSVIDResponse", "WITSVID", "WITBundlesRequest")
    }
    string, message, optional, repeated = 9, 11, False, True
    assert fields == {
        "WITSVIDRequest": [("spiffe_id", 1, string, optional)],
        "WITSVIDResponse": [("svids", 1, message, repeated)],
        "WITSVID": [
            ("spiffe_id", 1, string, optional),
            ("wit_svid", 2, string, optional),
            ("wit_svid_key", 3, string, optional),
            ("hint", 4, string, optional),
        ],
        "WITBundlesRequest": [],
    }
    bundles = pb.DESCRIPTOR.message_types_by_name["WITBundlesResponse"].fields_by_name["bundles"]
    entry = bundles.message_type.fields_by_name
    assert bundles.number == 1 and (entry["key"].type, entry["value"].type) == (string, string)
    service = pb.DESCRIPTOR.services_by_name["SpiffeWorkloadAPI"].methods_by_name
    for method, request, response in (
        ("FetchWITSVID", "WITSVIDRequest", "WITSVIDResponse"),
        ("FetchWITBundles", "WITBundlesRequest", "WITBundlesResponse"),
    ):
        assert service[method].input_type.name == request
        assert service[method].output_type.name == response
        assert service[method].server_streaming and not service[method].client_streaming


def test_service_registered_under_public_name() -> None:
    assert WORKLOAD_SERVICE == "SpiffeWorkloadAPI"
    assert pb.DESCRIPTOR.services_by_name["SpiffeWorkloadAPI"].full_name == (
        "insignia.workload.SpiffeWorkloadAPI"
    )


# --- live wire test against py-spiffe's client -------------------------------------------

TD = "example.org"
FED_TD = "federated.example"


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Certificate | None,
    issuer_key: ec.EllipticCurvePrivateKey,
    uri: str,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    is_ca = issuer is None
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=not is_ca,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=is_ca,
                crl_sign=is_ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=False
        )
    )
    return builder.sign(issuer_key, hashes.SHA256())


class Fixtures:
    """Real certificates, keys and a JWT so py-spiffe's parsers accept what we send."""

    def __init__(self) -> None:
        der = serialization.Encoding.DER
        self.ca_key = ec.generate_private_key(ec.SECP256R1())
        self.ca = _cert("ca", self.ca_key, None, self.ca_key, f"spiffe://{TD}")
        self.fed_key = ec.generate_private_key(ec.SECP256R1())
        self.fed_ca = _cert("fed", self.fed_key, None, self.fed_key, f"spiffe://{FED_TD}")
        self.svids = []
        for path in ("/web", "/db"):
            key = ec.generate_private_key(ec.SECP256R1())
            leaf = _cert(path, key, self.ca, self.ca_key, f"spiffe://{TD}{path}")
            key_der = key.private_bytes(
                der, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
            self.svids.append((f"spiffe://{TD}{path}", leaf.public_bytes(der), key_der))
        self.bundle = self.ca.public_bytes(der)
        self.fed_bundle = self.fed_ca.public_bytes(der)
        jwk = public_key_to_jwk(self.ca_key.public_key()) | {"kid": "k1", "use": "jwt-svid"}
        self.jwks = json.dumps({"keys": [jwk]}).encode()
        self.token = jwt.encode(
            {"sub": f"spiffe://{TD}/web", "aud": ["a", "b"], "exp": int(time.time()) + 600},
            self.ca_key,
            algorithm="ES256",
            headers={"kid": "k1"},
        )


class RecordingServicer:
    """Answers every RPC with fixed data and records what arrived, to compare both ends."""

    def __init__(self, fx: Fixtures) -> None:
        self.fx = fx
        self.seen: list[tuple[str, Any, str | None]] = []

    def _record(self, method: str, request: Any, context: Any) -> None:
        header = dict(context.invocation_metadata() or ()).get(SECURITY_HEADER_KEY)
        self.seen.append((method, request, header))

    async def FetchX509SVID(
        self, request: pb.X509SVIDRequest, context: Any
    ) -> AsyncIterator[pb.X509SVIDResponse]:
        self._record("FetchX509SVID", request, context)
        yield pb.X509SVIDResponse(
            svids=[
                pb.X509SVID(
                    spiffe_id=sid,
                    x509_svid=cert,
                    x509_svid_key=key,
                    bundle=self.fx.bundle,
                    hint=f"hint{i}",
                )
                for i, (sid, cert, key) in enumerate(self.fx.svids)
            ],
            crl=[b"crl-bytes"],
            federated_bundles={FED_TD: self.fx.fed_bundle},
        )

    async def FetchX509Bundles(
        self, request: pb.X509BundlesRequest, context: Any
    ) -> AsyncIterator[pb.X509BundlesResponse]:
        self._record("FetchX509Bundles", request, context)
        yield pb.X509BundlesResponse(
            crl=[b"crl2"], bundles={TD: self.fx.bundle, FED_TD: self.fx.fed_bundle}
        )

    async def FetchJWTSVID(self, request: pb.JWTSVIDRequest, context: Any) -> pb.JWTSVIDResponse:
        self._record("FetchJWTSVID", request, context)
        return pb.JWTSVIDResponse(
            svids=[pb.JWTSVID(spiffe_id=f"spiffe://{TD}/web", svid=self.fx.token, hint="jh")]
        )

    async def FetchJWTBundles(
        self, request: pb.JWTBundlesRequest, context: Any
    ) -> AsyncIterator[pb.JWTBundlesResponse]:
        self._record("FetchJWTBundles", request, context)
        yield pb.JWTBundlesResponse(bundles={TD: self.fx.jwks})

    async def ValidateJWTSVID(
        self, request: pb.ValidateJWTSVIDRequest, context: Any
    ) -> pb.ValidateJWTSVIDResponse:
        self._record("ValidateJWTSVID", request, context)
        claims = struct_pb2.Struct()
        claims.update({"sub": f"spiffe://{TD}/web", "n": 7, "aud": ["a", "b"]})
        return pb.ValidateJWTSVIDResponse(spiffe_id=f"spiffe://{TD}/web", claims=claims)


PY_SPIFFE_CLIENT = """
import json, sys
from spiffe import WorkloadApiClient, SpiffeId
from spiffe._proto import workload_pb2, workload_pb2_grpc
import grpc

socket = sys.argv[1]
out = {}
with WorkloadApiClient(socket_path="unix://" + socket) as client:
    ctx = client.fetch_x509_context(timeout=10)
    out["svids"] = [str(s.spiffe_id) for s in ctx.x509_svids]
    out["default_leaf_cn"] = ctx.default_svid.leaf.subject.rfc4514_string()
    out["bundle_tds"] = sorted(str(b.trust_domain) for b in ctx.x509_bundle_set._bundles.values())
    out["x509_bundles"] = sorted(
        str(b.trust_domain) for b in client.fetch_x509_bundles(timeout=10)._bundles.values()
    )
    svid = client.fetch_jwt_svid(audience={"a", "b"}, subject=SpiffeId("spiffe://example.org/web"),
                                 timeout=10)
    out["jwt_sub"] = str(svid.spiffe_id)
    out["jwt_aud"] = sorted(svid.audience)
    bundles = client.fetch_jwt_bundles(timeout=10)
    out["jwt_kids"] = sorted(bundles.get_bundle_for_trust_domain(
        __import__("spiffe").TrustDomain("example.org")).jwt_authorities)
    client.validate_jwt_svid(svid.token, "a", timeout=10)

# Fields py-spiffe's model drops (hint, crl, claims): read them with its raw stub.
channel = grpc.insecure_channel("unix:" + socket)
stub = workload_pb2_grpc.SpiffeWorkloadAPIStub(channel)
md = [("workload.spiffe.io", "true")]
first = next(iter(stub.FetchX509SVID(workload_pb2.X509SVIDRequest(), metadata=md, timeout=10)))
out["hints"] = [s.hint for s in first.svids]
out["crl"] = [c.decode() for c in first.crl]
out["jwt_hint"] = stub.FetchJWTSVID(workload_pb2.JWTSVIDRequest(audience=["x"]), metadata=md,
                                    timeout=10).svids[0].hint
v = stub.ValidateJWTSVID(workload_pb2.ValidateJWTSVIDRequest(audience="a", svid="t"),
                         metadata=md, timeout=10)
out["claims"] = {k: v.claims[k] for k in ("sub", "n")}
out["claims_aud"] = list(v.claims["aud"])
channel.close()
print(json.dumps(out))
"""


def test_py_spiffe_client_decodes_what_our_handler_sends(tmp_path: Path) -> None:
    fx = Fixtures()
    servicer = RecordingServicer(fx)
    socket_path = tmp_path / "workload.sock"

    async def main() -> dict[str, Any]:
        async def start() -> grpc.aio.Server:
            server = grpc.aio.server()
            server.add_generic_rpc_handlers([workload_api_handler(servicer)])
            server.add_insecure_port(f"unix:{socket_path}")
            await server.start()
            return server

        server = await call_asyncio(start)
        try:
            with trio.fail_after(60):
                done = await trio.run_process(
                    [sys.executable, "-c", PY_SPIFFE_CLIENT, str(socket_path)],
                    capture_stdout=True,
                    capture_stderr=True,
                    check=False,
                )
        finally:
            await call_asyncio(server.stop, None)
        assert done.returncode == 0, done.stderr.decode()
        result: dict[str, Any] = json.loads(done.stdout)
        return result

    out = runtime.run(main)
    assert out["svids"] == [f"spiffe://{TD}/web", f"spiffe://{TD}/db"]
    assert out["default_leaf_cn"] == "CN=/web"
    assert out["bundle_tds"] == [TD, FED_TD]
    assert out["x509_bundles"] == [TD, FED_TD]
    assert out["jwt_sub"] == f"spiffe://{TD}/web"
    assert out["jwt_aud"] == ["a", "b"]
    assert out["jwt_kids"] == ["k1"]
    assert out["hints"] == ["hint0", "hint1"]
    assert out["crl"] == ["crl-bytes"]
    assert out["jwt_hint"] == "jh"
    assert out["claims"]["sub"] == f"spiffe://{TD}/web"
    assert out["claims"]["n"] == 7
    assert out["claims_aud"] == ["a", "b"]

    # What py-spiffe sent decoded correctly on our side, with the security header.
    jwt_requests = [req for method, req, _ in servicer.seen if method == "FetchJWTSVID"]
    assert sorted(jwt_requests[0].audience) == ["a", "b"]
    assert jwt_requests[0].spiffe_id == f"spiffe://{TD}/web"
    validate = [req for method, req, _ in servicer.seen if method == "ValidateJWTSVID"]
    assert (validate[0].audience, validate[0].svid) == ("a", fx.token)
    assert (validate[1].audience, validate[1].svid) == ("a", "t")
    assert {method for method, _, _ in servicer.seen} == {
        "FetchX509SVID",
        "FetchX509Bundles",
        "FetchJWTSVID",
        "FetchJWTBundles",
        "ValidateJWTSVID",
    }
    assert all(header == "true" for _, _, header in servicer.seen)
