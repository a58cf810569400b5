"""The server CA as an intermediate under an upstream CA given as files on disk."""

from __future__ import annotations

import subprocess
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from insignia.keys import KeyType, generate_key, private_key_to_pem
from insignia.spiffeid import TrustDomain
from insignia.x509ca import build_root_ca
from tests.integration.conftest import ServerFactory
from tests.integration.server_agent_client import attest_join_token

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
