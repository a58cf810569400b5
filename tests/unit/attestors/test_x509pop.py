from __future__ import annotations

import base64
import hashlib
import json
import subprocess
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from insignia.attestors.interface import (
    AgentAttestation,
    AttestationError,
    Challenge,
    ServerEnvironment,
)
from insignia.attestors.node.x509pop import (
    X509PopAgent,
    X509PopAgentConfig,
    X509PopServer,
    X509PopServerConfig,
    X509PopSession,
)
from insignia.selectors import Selector
from insignia.server.ca.x509ca import SigningAuthority
from insignia.spiffeid import SpiffeId
from tests.unit.attestors.pki import (
    intermediate_ca,
    node_cert,
    pem,
    root_ca,
    write_node_files,
)
from tests.unit.common import TD, WALL_NOW


def sha1(cert: x509.Certificate) -> str:
    return hashlib.sha1(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def server_for(tmp_path: Path, *cas: x509.Certificate, now: datetime = WALL_NOW) -> X509PopServer:
    bundle = tmp_path / "node-cas.pem"
    bundle.write_bytes(pem(*cas))
    config = X509PopServerConfig(ca_bundle_paths=(bundle,))
    return X509PopServer(config, ServerEnvironment(TD, clock=lambda: now))


def agent_for(
    tmp_path: Path, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey, *chain: x509.Certificate
) -> X509PopAgent:
    key_path, cert_path = write_node_files(tmp_path, key, *chain)
    config = X509PopAgentConfig(private_key_path=key_path, certificate_path=cert_path)
    return X509PopAgent(config, TD)


async def run(agent: X509PopAgent, session: X509PopSession) -> AgentAttestation:
    """Drive the exchange the way the agent API's stream does."""
    step = await session.begin(await agent.payload())
    while isinstance(step, Challenge):
        step = await session.answer(await agent.answer(step.data))
    return step


@pytest.fixture(scope="module")
def pki() -> tuple[SigningAuthority, SigningAuthority]:
    root = root_ca()
    return root, intermediate_ca(root)


async def test_node_under_an_intermediate_attests_with_spire_style_id_and_selectors(
    tmp_path: Path, pki: tuple[SigningAuthority, SigningAuthority]
) -> None:
    root, inter = pki
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = node_cert(inter, key, cn="node-1", dns=("node-1.example", "n1.example"))
    result = await run(
        agent_for(tmp_path, key, leaf, inter.certificate),
        server_for(tmp_path, root.certificate).session(),
    )
    assert result.agent_id == SpiffeId.parse(
        f"spiffe://example.org/insignia/agent/x509pop/{sha1(leaf)}"
    )
    assert result.can_reattest
    assert set(result.selectors) == {
        Selector("x509pop", "subject:cn:node-1"),
        Selector("x509pop", f"ca:fingerprint:{sha1(inter.certificate)}"),
        Selector("x509pop", f"ca:fingerprint:{sha1(root.certificate)}"),
        Selector("x509pop", "serialnumber:0a1b2c"),
        Selector("x509pop", "san:dns:node-1.example"),
        Selector("x509pop", "san:dns:n1.example"),
    }


@pytest.mark.parametrize(
    "key",
    [
        ec.generate_private_key(ec.SECP384R1()),
        rsa.generate_private_key(public_exponent=65537, key_size=2048),
    ],
    ids=["ec-p384", "rsa-2048"],
)
async def test_ec_and_rsa_node_keys(
    tmp_path: Path,
    pki: tuple[SigningAuthority, SigningAuthority],
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey,
) -> None:
    root, _ = pki
    result = await run(
        agent_for(tmp_path, key, node_cert(root, key)),
        server_for(tmp_path, root.certificate).session(),
    )
    assert result.agent_id.path.startswith("/insignia/agent/x509pop/")


async def test_certificate_from_another_ca_is_not_trusted(
    tmp_path: Path, pki: tuple[SigningAuthority, SigningAuthority]
) -> None:
    root, _ = pki
    other = root_ca()
    key = ec.generate_private_key(ec.SECP256R1())
    session = server_for(tmp_path, root.certificate).session()
    with pytest.raises(AttestationError, match="node certificate not trusted"):
        await run(agent_for(tmp_path, key, node_cert(other, key)), session)


@pytest.mark.parametrize(
    "now",
    [WALL_NOW + timedelta(days=2), WALL_NOW - timedelta(hours=1)],
    ids=["expired", "not-yet-valid"],
)
async def test_validity_period_is_checked(
    tmp_path: Path, pki: tuple[SigningAuthority, SigningAuthority], now: datetime
) -> None:
    root, _ = pki
    key = ec.generate_private_key(ec.SECP256R1())
    session = server_for(tmp_path, root.certificate, now=now).session()
    with pytest.raises(AttestationError, match="not valid at validation time"):
        await run(agent_for(tmp_path, key, node_cert(root, key)), session)


NO_DIGITAL_SIGNATURE = x509.KeyUsage(
    digital_signature=False,
    content_commitment=False,
    key_encipherment=True,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=False,
    crl_sign=False,
    encipher_only=False,
    decipher_only=False,
)


async def test_node_certificate_must_allow_digital_signature_and_not_be_a_ca(
    tmp_path: Path, pki: tuple[SigningAuthority, SigningAuthority]
) -> None:
    root, _ = pki
    key = ec.generate_private_key(ec.SECP256R1())
    server = server_for(tmp_path, root.certificate)
    bad_usage = node_cert(root, key, key_usage=NO_DIGITAL_SIGNATURE)
    with pytest.raises(AttestationError, match="lacks digitalSignature"):
        await run(agent_for(tmp_path, key, bad_usage), server.session())
    with pytest.raises(AttestationError, match="node certificate is a CA"):
        await run(agent_for(tmp_path, key, node_cert(root, key, ca=True)), server.session())


async def test_a_stolen_certificate_without_its_key_does_not_attest(
    tmp_path: Path, pki: tuple[SigningAuthority, SigningAuthority]
) -> None:
    root, _ = pki
    owner_key = ec.generate_private_key(ec.SECP256R1())
    leaf = node_cert(root, owner_key)
    session = server_for(tmp_path, root.certificate).session()
    challenge = await session.begin(await agent_for(tmp_path, owner_key, leaf).payload())
    assert isinstance(challenge, Challenge)
    # The thief has the certificate and its own key, and answers with that.
    thief_dir = tmp_path / "thief"
    thief_dir.mkdir()
    thief_key = ec.generate_private_key(ec.SECP256R1())
    thief = agent_for(thief_dir, thief_key, node_cert(root, thief_key))
    await thief.payload()
    with pytest.raises(AttestationError, match="does not verify"):
        await session.answer(await thief.answer(challenge.data))


async def test_agent_refuses_a_key_that_is_not_its_certificates(
    tmp_path: Path, pki: tuple[SigningAuthority, SigningAuthority]
) -> None:
    root, _ = pki
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = node_cert(root, ec.generate_private_key(ec.SECP256R1()))
    with pytest.raises(AttestationError, match="is not the key of"):
        await agent_for(tmp_path, key, leaf).payload()


async def test_each_challenge_is_fresh_and_answerable_once(
    tmp_path: Path, pki: tuple[SigningAuthority, SigningAuthority]
) -> None:
    root, _ = pki
    key = ec.generate_private_key(ec.SECP256R1())
    agent = agent_for(tmp_path, key, node_cert(root, key))
    server = server_for(tmp_path, root.certificate)
    first, second = server.session(), server.session()
    c1 = await first.begin(await agent.payload())
    c2 = await second.begin(await agent.payload())
    assert isinstance(c1, Challenge) and isinstance(c2, Challenge)
    assert json.loads(c1.data)["nonce"] != json.loads(c2.data)["nonce"]
    answer1 = await agent.answer(c1.data)
    assert isinstance(await first.answer(answer1), AgentAttestation)
    with pytest.raises(AttestationError, match="no challenge outstanding"):
        await first.answer(answer1)  # replay on the same session
    with pytest.raises(AttestationError, match="does not verify"):
        await second.answer(answer1)  # replay against another session's nonce
    with pytest.raises(AttestationError, match="no challenge outstanding"):
        await second.answer(await agent.answer(c2.data))  # a failed answer used it up


async def test_agent_refuses_to_sign_for_another_trust_domain(
    tmp_path: Path, pki: tuple[SigningAuthority, SigningAuthority]
) -> None:
    root, _ = pki
    key = ec.generate_private_key(ec.SECP256R1())
    agent = agent_for(tmp_path, key, node_cert(root, key))
    await agent.payload()
    relayed = json.dumps(
        {"nonce": base64.b64encode(b"n" * 32).decode(), "trust_domain": "evil.org"}
    )
    with pytest.raises(AttestationError, match=r"for trust domain 'evil\.org', not ours"):
        await agent.answer(relayed.encode())
    short = json.dumps({"nonce": base64.b64encode(b"n").decode(), "trust_domain": "example.org"})
    with pytest.raises(AttestationError, match="nonce is 1 bytes"):
        await agent.answer(short.encode())


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b'{"certificates": []}', "certificates: expected array of length >= 1"),
        (b'{"certificates": ["%%%"]}', "certificate is not valid base64"),
        (b'{"certificates": ["aGVsbG8="]}', "not DER X.509"),
        (
            json.dumps({"certificates": ["aGVsbG8="] * 9}).encode(),
            "certificates: expected array of length <= 8",
        ),
    ],
)
async def test_malformed_payloads_are_refused(
    tmp_path: Path, pki: tuple[SigningAuthority, SigningAuthority], payload: bytes, reason: str
) -> None:
    root, _ = pki
    with pytest.raises(AttestationError, match=reason):
        await server_for(tmp_path, root.certificate).session().begin(payload)


def test_ca_bundle_must_hold_only_cas(
    tmp_path: Path, pki: tuple[SigningAuthority, SigningAuthority]
) -> None:
    root, _ = pki
    key = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(ValueError, match="'CN=node-1' is not a CA"):
        server_for(tmp_path, root.certificate, node_cert(root, key))


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


async def test_node_pki_made_with_the_openssl_cli(tmp_path: Path) -> None:
    """A CA from `openssl req -x509` has no KeyUsage; operators make node CAs this way."""
    ec_args = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    openssl("req", "-x509", *ec_args, "-keyout", "ca.key", "-out", "ca.pem",
            "-subj", "/CN=node CA", "-days", "2", cwd=tmp_path)  # fmt: skip
    openssl("req", *ec_args, "-keyout", "node.key", "-out", "node.csr",
            "-subj", "/CN=edge-7", cwd=tmp_path)  # fmt: skip
    (tmp_path / "ext").write_text("keyUsage=critical,digitalSignature\n")
    openssl("x509", "-req", "-in", "node.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "node.pem", "-days", "1", "-extfile", "ext",
            cwd=tmp_path)  # fmt: skip
    ca = x509.load_pem_x509_certificate((tmp_path / "ca.pem").read_bytes())
    agent = X509PopAgent(
        X509PopAgentConfig(
            private_key_path=tmp_path / "node.key", certificate_path=tmp_path / "node.pem"
        ),
        TD,
    )
    server = X509PopServer(
        X509PopServerConfig(ca_bundle_paths=(tmp_path / "ca.pem",)), ServerEnvironment(TD)
    )
    result = await run(agent, server.session())
    assert Selector("x509pop", "subject:cn:edge-7") in result.selectors
    assert Selector("x509pop", f"ca:fingerprint:{sha1(ca)}") in result.selectors
