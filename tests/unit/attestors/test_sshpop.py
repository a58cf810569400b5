"""sshpop with host keys and certificates made by OpenSSH's own ssh-keygen."""

from __future__ import annotations

import base64
import hashlib
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from insignia.attestors.interface import (
    AgentAttestation,
    AttestationError,
    Challenge,
    ServerEnvironment,
)
from insignia.attestors.node.sshpop import (
    SshPopAgent,
    SshPopAgentConfig,
    SshPopServer,
    SshPopServerConfig,
)
from insignia.selectors import Selector
from insignia.spiffeid import SpiffeId
from tests.unit.common import TD


def keygen(*args: str, cwd: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", *args], cwd=cwd, check=True, capture_output=True)


def host_cert(
    directory: Path, ca: str = "ca", key_type: str = "ecdsa", *extra: str
) -> tuple[Path, Path]:
    """A host key and its certificate from `ca`, for principals node1.example and node1."""
    if not (directory / ca).exists():
        keygen("-t", "ed25519", "-f", ca, "-N", "", cwd=directory)
    keygen("-t", key_type, "-f", "host", "-N", "", cwd=directory)
    window = ("-V", "-5m:+1h") if "-V" not in extra else ()
    keygen("-s", ca, "-I", "node1", "-h", "-n", "node1.example,node1", *window, *extra,
           "host.pub", cwd=directory)  # fmt: skip
    return directory / "host", directory / "host-cert.pub"


def agent(key: Path, cert: Path, hostname: str = "node1") -> SshPopAgent:
    config = SshPopAgentConfig(host_key_path=key, host_cert_path=cert, hostname=hostname)
    return SshPopAgent(config, TD)


def server(ca_pub: Path, domain: str | None = None, now: datetime | None = None) -> SshPopServer:
    config = SshPopServerConfig(cert_authorities_path=ca_pub, canonical_domain=domain)
    clock = (lambda: now) if now else (lambda: datetime.now(UTC))
    return SshPopServer(config, ServerEnvironment(TD, clock=clock))


async def run(node: SshPopAgent, srv: SshPopServer) -> AgentAttestation:
    session = srv.session()
    step = await session.begin(await node.payload())
    while isinstance(step, Challenge):
        step = await session.answer(await node.answer(step.data))
    return step


@pytest.mark.parametrize("key_type", ["ecdsa", "ed25519", "rsa"])
async def test_host_certificate_from_a_trusted_ca_attests(tmp_path: Path, key_type: str) -> None:
    key, cert = host_cert(tmp_path, "ca", key_type)
    result = await run(agent(key, cert), server(tmp_path / "ca.pub"))
    wire = base64.b64decode(cert.read_text().split()[1])
    fp = base64.urlsafe_b64encode(hashlib.sha256(wire).digest()).decode().rstrip("=")
    assert result == AgentAttestation(
        SpiffeId.parse(f"spiffe://example.org/insignia/agent/sshpop/{fp}"),
        (Selector("sshpop", "principal:node1.example"), Selector("sshpop", "principal:node1")),
        can_reattest=True,
    )


async def test_canonical_domain_is_appended_to_the_hostname(tmp_path: Path) -> None:
    key, cert = host_cert(tmp_path)
    assert await run(agent(key, cert), server(tmp_path / "ca.pub", domain="example"))
    with pytest.raises(AttestationError, match=r"'node1\.other' is not a principal"):
        await run(agent(key, cert), server(tmp_path / "ca.pub", domain="other"))


async def test_refusals(tmp_path: Path) -> None:
    key, cert = host_cert(tmp_path)
    trusted = tmp_path / "ca.pub"
    with pytest.raises(AttestationError, match="'web9' is not a principal"):
        await run(agent(key, cert, hostname="web9"), server(trusted))
    later = datetime.now(UTC) + timedelta(hours=2)
    with pytest.raises(AttestationError, match="outside its validity period"):
        await run(agent(key, cert), server(trusted, now=later))

    other = tmp_path / "other"
    other.mkdir()
    key2, cert2 = host_cert(other, "ca2")
    with pytest.raises(AttestationError, match="not signed by a trusted CA"):
        await run(agent(key2, cert2), server(trusted))

    user = tmp_path / "user"
    user.mkdir()
    (user / "ca").write_bytes((tmp_path / "ca").read_bytes())
    (user / "ca").chmod(0o600)
    keygen("-t", "ecdsa", "-f", "id", "-N", "", cwd=user)
    keygen("-s", "ca", "-I", "alice", "-n", "node1", "id.pub", cwd=user)  # a user cert
    with pytest.raises(AttestationError, match="a user certificate"):
        await run(agent(user / "id", user / "id-cert.pub"), server(trusted))


async def test_proof_needs_the_host_key_and_is_single_use(tmp_path: Path) -> None:
    key, cert = host_cert(tmp_path)
    srv = server(tmp_path / "ca.pub")
    session = srv.session()
    node = agent(key, cert)
    challenge = await session.begin(await node.payload())
    assert isinstance(challenge, Challenge)
    thief_dir = tmp_path / "thief"
    thief_dir.mkdir()
    (thief_dir / "ca").write_bytes((tmp_path / "ca").read_bytes())
    (thief_dir / "ca").chmod(0o600)
    thief = agent(*host_cert(thief_dir))
    await thief.payload()
    with pytest.raises(AttestationError, match="does not verify"):
        await session.answer(await thief.answer(challenge.data))
    with pytest.raises(AttestationError, match="no challenge outstanding"):
        await session.answer(await node.answer(challenge.data))


async def test_agent_refuses_a_key_that_does_not_match_its_certificate(tmp_path: Path) -> None:
    _, cert = host_cert(tmp_path)
    keygen("-t", "ecdsa", "-f", "stray", "-N", "", cwd=tmp_path)
    with pytest.raises(AttestationError, match="is not the key of"):
        await agent(tmp_path / "stray", cert).payload()
