"""x509pop node attestation against a real server: node aliases, wrong key, wrong CA, ban."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID
from insignia_proto import agent_pb2

from devtools.harness.agent_api_client import attest
from devtools.harness.server_process import ServerProcess
from insignia.attestors.node.pop import answer_challenge
from insignia.attestors.node.x509pop import X509PopAgent, X509PopAgentConfig, fingerprint
from insignia.keys import KeyType, generate_key, private_key_to_pem
from insignia.server.ca.x509ca import SigningAuthority, build_root_ca
from insignia.spiffeid import TrustDomain
from tests.integration.conftest import ServerFactory

pytestmark = pytest.mark.integration
TD = TrustDomain.parse("example.org")


def node_cert(ca: SigningAuthority, directory: Path, cn: str) -> X509PopAgentConfig:
    key = generate_key(KeyType.EC_P256)
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, False, False, False, False), True
        )
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(f"{cn}.example.org")]), False)
        .sign(ca.private_key, ca.signature_hash)
    )
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "node.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "node.key").write_bytes(private_key_to_pem(key))
    return X509PopAgentConfig(
        private_key_path=directory / "node.key", certificate_path=directory / "node.pem"
    )


def attest_x509pop(server: ServerProcess, config: X509PopAgentConfig, answer_key: object = None):  # type: ignore[no-untyped-def]
    agent = X509PopAgent(config, TD)
    payload = trio.run(agent.payload)

    def answer(challenge: bytes) -> bytes:
        if answer_key is not None:
            return answer_challenge("x509pop", answer_key, challenge, TD.name)  # type: ignore[arg-type]
        return trio.run(agent.answer, challenge)

    return attest(server, "x509pop", payload, answer)


@pytest.fixture
def node_ca(tmp_path: Path) -> SigningAuthority:
    ca = build_root_ca(
        TrustDomain.parse("nodes.example"), generate_key(KeyType.EC_P256), timedelta(days=1)
    )
    (tmp_path / "node-ca.pem").write_bytes(ca.certificate.public_bytes(serialization.Encoding.PEM))
    return ca


def test_x509pop_node_alias_and_refusals(
    server_factory: ServerFactory, node_ca: SigningAuthority, tmp_path: Path
) -> None:
    server = server_factory(
        node_attestors={
            "join_token": {},
            "x509pop": {"ca_bundle_paths": [tmp_path / "node-ca.pem"]},
        }
    )
    config = node_cert(node_ca, tmp_path / "node1", "node1")
    alias = server.create_entry(
        "spiffe://example.org/nodes/web",
        "spiffe://example.org/insignia/server",
        ["x509pop:subject:cn:node1"],
    )
    workload = server.create_entry(
        "spiffe://example.org/web", "spiffe://example.org/nodes/web", ["unix:uid:1000"]
    )
    agent = attest_x509pop(server, config)
    leaf = x509.load_pem_x509_certificate(config.certificate_path.read_bytes())
    assert agent.agent_id == f"spiffe://example.org/insignia/agent/x509pop/{fingerprint(leaf)}"
    shown = server.cli_json("agent", "show", agent.agent_id)
    assert "x509pop:subject:cn:node1" in shown["selectors"]
    assert shown["reattestable"] is True
    with agent.channel() as channel:
        first = next(agent.stub(channel).Sync(agent_pb2.SyncRequest(), timeout=30))
        assert {e.id for e in first.entries} == {alias, workload}
    assert attest_x509pop(server, config).agent_id == agent.agent_id  # may re-attest

    with pytest.raises(grpc.RpcError) as wrong_key:
        attest_x509pop(server, config, answer_key=generate_key(KeyType.EC_P256))
    assert wrong_key.value.code() == grpc.StatusCode.PERMISSION_DENIED

    other_ca = build_root_ca(
        TrustDomain.parse("evil.example"), generate_key(KeyType.EC_P256), timedelta(days=1)
    )
    with pytest.raises(grpc.RpcError) as wrong_ca:
        attest_x509pop(server, node_cert(other_ca, tmp_path / "evil", "node1"))
    assert wrong_ca.value.code() == grpc.StatusCode.PERMISSION_DENIED

    server.cli("agent", "ban", agent.agent_id)
    with pytest.raises(grpc.RpcError) as banned:
        attest_x509pop(server, config)
    assert banned.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "banned" in (banned.value.details() or "")


def test_a_banned_agent_stays_banned_through_evict(
    server_factory: ServerFactory, node_ca: SigningAuthority, tmp_path: Path
) -> None:
    """x509pop agents may re-attest with the same node certificate: forgetting the ban on
    evict would let a banned node straight back in."""
    server = server_factory(
        node_attestors={"x509pop": {"ca_bundle_paths": [tmp_path / "node-ca.pem"]}}
    )
    config = node_cert(node_ca, tmp_path / "node1", "node1")
    agent = attest_x509pop(server, config)
    server.cli("agent", "ban", agent.agent_id)
    evicted = server.cli("agent", "evict", agent.agent_id, check=False)
    assert evicted.returncode == 1
    assert "FAILED_PRECONDITION" in evicted.stderr and "banned" in evicted.stderr
    assert server.cli_json("agent", "show", agent.agent_id)["banned"] is True
    with pytest.raises(grpc.RpcError) as refused:
        attest_x509pop(server, config)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "banned" in (refused.value.details() or "")
