"""The server CA as an intermediate under an upstream CA given as files on disk."""

from __future__ import annotations

import subprocess
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import grpc
import pytest
from cryptography.hazmat.primitives import serialization
from insignia_proto import agent_pb2

from devtools.harness.agent_api_client import attest_join_token
from insignia.bundle import load_der_certificates
from insignia.keys import KeyType, generate_key, private_key_to_pem
from insignia.server.ca.x509_leaf import build_leaf
from insignia.server.ca.x509ca import SigningAuthority, build_intermediate_ca, build_root_ca
from insignia.spiffeid import SpiffeId, TrustDomain
from tests.integration.conftest import ServerFactory

pytestmark = pytest.mark.integration


def test_upstream_root_in_bundle_and_chains_verify(
    server_factory: ServerFactory, tmp_path: Path
) -> None:
    upstream = build_root_ca(
        TrustDomain.parse("example.org"), generate_key(KeyType.EC_P384), timedelta(days=30)
    )
    root_pem = upstream.certificate.public_bytes(serialization.Encoding.PEM)
    (tmp_path / "up.pem").write_bytes(root_pem)
    (tmp_path / "up.key").write_bytes(private_key_to_pem(upstream.private_key))
    server = server_factory(
        ca={"upstream": {"cert_file": tmp_path / "up.pem", "key_file": tmp_path / "up.key"}}
    )
    assert server.bundle_pem() == root_pem
    out = tmp_path / "svid"
    server.cli("x509", "mint", "--spiffe-id", "spiffe://example.org/w", "--write", str(out))
    chain = (out / "svid.pem").read_bytes()
    assert chain.count(b"BEGIN CERTIFICATE") == 2  # leaf and the server's intermediate CA
    leaf_end = chain.index(b"-----END CERTIFICATE-----\n") + 26
    (out / "leaf.pem").write_bytes(chain[:leaf_end])
    (out / "intermediate.pem").write_bytes(chain[leaf_end:])
    result = subprocess.run(
        [
            "openssl",
            "verify",
            "-CAfile",
            str(server.bundle_path),
            "-untrusted",
            str(out / "intermediate.pem"),
            str(out / "leaf.pem"),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    agent = attest_join_token(server, server.join_token())  # TLS to the server verifies too
    assert agent.chain_der


def test_a_sibling_ca_under_the_upstream_cannot_pose_as_an_agent(
    server_factory: ServerFactory, tmp_path: Path
) -> None:
    """Another CA under the same upstream root chains to our bundle too; copying an agent's
    ID and serial number must not make its certificate the agent's."""
    td = TrustDomain.parse("example.org")
    upstream = build_root_ca(td, generate_key(KeyType.EC_P256), timedelta(days=30))
    (tmp_path / "up.pem").write_bytes(upstream.certificate.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "up.key").write_bytes(private_key_to_pem(upstream.private_key))
    server = server_factory(
        ca={"upstream": {"cert_file": tmp_path / "up.pem", "key_file": tmp_path / "up.key"}}
    )
    agent = attest_join_token(server, server.join_token())
    leaf = load_der_certificates(agent.chain_der)[0]
    sibling_key = generate_key(KeyType.EC_P256)
    sibling_cert = build_intermediate_ca(upstream, sibling_key.public_key(), td, timedelta(days=1))
    sibling = SigningAuthority(sibling_cert, sibling_key, (sibling_cert, *upstream.chain))
    forged = build_leaf(
        agent.key.public_key(),
        SpiffeId.parse(agent.agent_id),
        timedelta(hours=1),
        sibling,
        serial=leaf.serial_number,
    )
    impostor = replace(
        agent,
        chain_der=b"".join(
            c.public_bytes(serialization.Encoding.DER) for c in (forged, *sibling.chain)
        ),
    )
    empty = agent_pb2.BatchNewJWTSVIDRequest()
    with impostor.channel() as channel, pytest.raises(grpc.RpcError) as refused:
        impostor.stub(channel).BatchNewJWTSVID(empty, timeout=30)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "not current" in (refused.value.details() or "")
    with agent.channel() as channel:  # the real agent is unaffected
        agent.stub(channel).BatchNewJWTSVID(empty, timeout=30)
