"""A minimal agent-side client of the server's agent API, for server tests and benchmarks.

It speaks agent.proto directly (no insignia-agent process): attest with a join token or any
attestor's payload, then open the mTLS channel with the agent SVID it got back. Channels trust
`server.bundle_path` (written when the server became ready; call `server.write_bundle()`
after rotating the CA by hand).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from insignia_proto import agent_pb2, agent_pb2_grpc

from devtools.harness.server_process import ServerProcess
from insignia.attestors.node.join_token import JoinTokenPayload
from insignia.attestors.node.messages import encode
from insignia.bundle import load_der_certificates
from insignia.daemon.server_name import SERVER_TLS_NAME
from insignia.keys import KeyType, PrivateKey, generate_key, private_key_to_pem, x509_signature_hash


def make_csr(
    key: PrivateKey, uris: Sequence[str] = (), *, dns: Sequence[str] = (), ca: bool = False
) -> bytes:
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in uris]
    names += [x509.DNSName(d) for d in dns]
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    if ca:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
    return builder.sign(key, x509_signature_hash(key)).public_bytes(serialization.Encoding.DER)


def der_chain_to_pem(der: bytes) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in load_der_certificates(der))


def _options() -> list[tuple[str, str]]:
    return [("grpc.ssl_target_name_override", SERVER_TLS_NAME)]


@dataclass
class AttestedAgent:
    agent_id: str
    key: PrivateKey
    chain_der: bytes
    bundle: bytes
    server: ServerProcess

    def channel(self) -> grpc.Channel:
        creds = grpc.ssl_channel_credentials(
            root_certificates=self.server.bundle_path.read_bytes(),
            private_key=private_key_to_pem(self.key),
            certificate_chain=der_chain_to_pem(self.chain_der),
        )
        address = f"{self.server.host}:{self.server.agent_api_port}"
        return grpc.secure_channel(address, creds, options=_options())

    def stub(self, channel: grpc.Channel) -> agent_pb2_grpc.AgentAPIStub:
        return agent_pb2_grpc.AgentAPIStub(channel)

    def sign_x509(
        self, channel: grpc.Channel, entry_id: str, csr: bytes
    ) -> agent_pb2.X509SVIDResult:
        request = agent_pb2.BatchNewX509SVIDRequest(
            params=[agent_pb2.X509SVIDParams(entry_id=entry_id, csr=csr)]
        )
        result: agent_pb2.X509SVIDResult = (
            self.stub(channel).BatchNewX509SVID(request, timeout=30).results[0]
        )
        return result


def attestation_channel(server: ServerProcess) -> grpc.Channel:
    creds = grpc.ssl_channel_credentials(root_certificates=server.bundle_path.read_bytes())
    return grpc.secure_channel(
        f"{server.host}:{server.attestation_port}", creds, options=_options()
    )


def attest(
    server: ServerProcess,
    attestor: str,
    payload: bytes,
    answer: Callable[[bytes], bytes] | None = None,
    key: PrivateKey | None = None,
    csr_id: str | None = None,
) -> AttestedAgent:
    """Run Attest; `answer(challenge) -> bytes` answers challenges. Raises grpc.RpcError."""
    key = key or generate_key(KeyType.EC_P256)
    csr = make_csr(key, [csr_id] if csr_id else [])
    with attestation_channel(server) as channel:
        stub = agent_pb2_grpc.AgentAPIStub(channel)
        outgoing: list[agent_pb2.AttestRequest] = [
            agent_pb2.AttestRequest(
                params=agent_pb2.AttestParams(attestor=attestor, payload=payload, csr=csr)
            )
        ]

        def requests() -> Iterator[agent_pb2.AttestRequest]:
            while outgoing:
                yield outgoing.pop(0)
                while not outgoing and not done:
                    pending.wait(0.01)

        pending = threading.Event()
        done = False
        result = None
        try:
            for response in stub.Attest(requests(), timeout=30):
                if response.WhichOneof("step") == "challenge":
                    assert answer is not None, "server sent a challenge and no answer was given"
                    outgoing.append(
                        agent_pb2.AttestRequest(challenge_response=answer(response.challenge))
                    )
                    pending.set()
                else:
                    result = response.result
                    break
        finally:
            done = True
    assert result is not None, "server closed Attest without a result"
    return AttestedAgent(result.agent_id, key, result.svid_chain, result.bundle, server)


def attest_join_token(
    server: ServerProcess, token: str, key: PrivateKey | None = None
) -> AttestedAgent:
    agent_id = server.agent_id(token)
    return attest(
        server, "join_token", encode(JoinTokenPayload(token=token)), key=key, csr_id=agent_id
    )
