"""Node attestor `sshpop`: proof that the node holds an OpenSSH host key certified by a CA.

The agent sends its host certificate (`ssh_host_*_key-cert.pub`) and hostname. The server
accepts it only if it is a host (not user) certificate, signed by one of the configured CA
keys, inside its validity window, and lists the hostname (with `canonical_domain` appended
when set) among its principals. It then runs the same nonce challenge as x509pop
(`insignia.attestors.node.pop`), answered with the host private key.

Agent ID `spiffe://<td>/insignia/agent/sshpop/<fingerprint>`, the fingerprint being SPIRE's:
unpadded URL-safe base64 of the SHA-256 of the certificate's wire form. Node selectors:
`sshpop:principal:<name>` for each principal the CA signed.
"""

from __future__ import annotations

import base64
import hashlib
import socket
from datetime import datetime
from pathlib import Path
from typing import Annotated, Final

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.serialization import ssh
from msgspec import Meta

from insignia.attestors.interface import (
    AgentAttestation,
    AttestationError,
    NodeAttestorPlugin,
    PluginConfig,
    ServerEnvironment,
)
from insignia.attestors.node.messages import Message, decode, encode
from insignia.attestors.node.pop import (
    NodeKey,
    NodePublicKey,
    PopAgent,
    PopSession,
    node_public_key,
)
from insignia.daemon.reserved_ids import agent_spiffe_id
from insignia.selectors import InvalidSelector, Selector

NAME: Final = "sshpop"


class SshPopPayload(Message, frozen=True, kw_only=True):
    certificate: Annotated[str, Meta(max_length=16384)]
    hostname: Annotated[str, Meta(min_length=1, max_length=253)]


def fingerprint(cert: ssh.SSHCertificate) -> str:
    wire = base64.b64decode(cert.public_bytes().split()[1])
    return base64.urlsafe_b64encode(hashlib.sha256(wire).digest()).decode().rstrip("=")


def _raw(key: ssh.SSHPublicKeyTypes) -> bytes:
    """A public key's OpenSSH encoding without the comment: how CA keys are compared."""
    return b" ".join(ssh.serialize_ssh_public_key(key).split()[:2])


def principal_selectors(cert: ssh.SSHCertificate) -> tuple[Selector, ...]:
    selectors = []
    for principal in cert.valid_principals:
        try:
            selectors.append(Selector(NAME, f"principal:{principal.decode()}"))
        except (UnicodeDecodeError, InvalidSelector):
            continue  # omitting a fact narrows what the node matches, never widens it
    return tuple(selectors)


# --- agent side -------------------------------------------------------------------------------


class SshPopAgentConfig(PluginConfig, frozen=True, kw_only=True):
    host_key_path: Path = Path("/etc/ssh/ssh_host_rsa_key")
    host_cert_path: Path = Path("/etc/ssh/ssh_host_rsa_key-cert.pub")
    #: Defaults to the system hostname.
    hostname: str | None = None


def load_host_credentials(config: SshPopAgentConfig) -> tuple[bytes, NodeKey]:
    """The certificate line and host key, checked to belong together (blocking)."""
    try:
        line = config.host_cert_path.read_bytes().strip()
        cert = ssh.load_ssh_public_identity(line)
        key = ssh.load_ssh_private_key(config.host_key_path.read_bytes(), None)
    except (OSError, ValueError, UnsupportedAlgorithm) as exc:
        raise AttestationError(NAME, f"cannot load host certificate or key: {exc}") from exc
    if not isinstance(cert, ssh.SSHCertificate):
        raise AttestationError(NAME, f"{config.host_cert_path} is a plain key, not a certificate")
    if not isinstance(key, NodeKey) or _raw(key.public_key()) != _raw(cert.public_key()):
        raise AttestationError(
            NAME, f"{config.host_key_path} is not the key of {config.host_cert_path}"
        )
    return line, key


class SshPopAgent(PopAgent[SshPopAgentConfig]):
    plugin = NAME

    def evidence(self) -> tuple[bytes, NodeKey]:
        line, key = load_host_credentials(self._config)
        hostname = self._config.hostname or socket.gethostname()
        return encode(SshPopPayload(certificate=line.decode(), hostname=hostname)), key


# --- server side ------------------------------------------------------------------------------


class SshPopServerConfig(PluginConfig, frozen=True, kw_only=True):
    """CA public keys in authorized_keys format, inline and/or from a file (the union)."""

    cert_authorities: tuple[str, ...] = ()
    cert_authorities_path: Path | None = None
    canonical_domain: str | None = None

    def __post_init__(self) -> None:
        if not self.cert_authorities and self.cert_authorities_path is None:
            raise ValueError("set cert_authorities or cert_authorities_path")


def load_authorities(config: SshPopServerConfig) -> frozenset[bytes]:
    lines = list(config.cert_authorities)
    if config.cert_authorities_path is not None:
        text = config.cert_authorities_path.read_text()
        lines += [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    try:
        return frozenset(_raw(ssh.load_ssh_public_key(ln.encode())) for ln in lines)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise ValueError(f"cannot parse an SSH CA key: {exc}") from exc


def verify_host_certificate(
    payload: SshPopPayload, authorities: frozenset[bytes], domain: str | None, now: datetime
) -> ssh.SSHCertificate:
    try:
        cert = ssh.load_ssh_public_identity(payload.certificate.encode())
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise AttestationError(NAME, f"not an OpenSSH certificate: {exc}") from exc
    if not isinstance(cert, ssh.SSHCertificate):
        raise AttestationError(NAME, "a plain public key, not a certificate")
    if cert.type is not ssh.SSHCertificateType.HOST:
        raise AttestationError(NAME, "a user certificate, not a host certificate")
    if _raw(cert.signature_key()) not in authorities:
        raise AttestationError(NAME, "certificate is not signed by a trusted CA")
    try:
        cert.verify_cert_signature()
    except Exception as exc:  # InvalidSignature or a malformed signature blob
        raise AttestationError(NAME, "certificate signature does not verify") from exc
    if not cert.valid_after <= now.timestamp() < cert.valid_before:
        raise AttestationError(NAME, "certificate is outside its validity period")
    principal = f"{payload.hostname}.{domain}" if domain else payload.hostname
    if principal.encode() not in cert.valid_principals:
        raise AttestationError(NAME, f"{principal!r} is not a principal of the certificate")
    return cert


class SshPopSession(PopSession):
    plugin = NAME

    def __init__(self, server: SshPopServer) -> None:
        super().__init__(server.env)
        self._server = server
        self._cert: ssh.SSHCertificate | None = None

    def verify_evidence(self, payload: bytes) -> NodePublicKey:
        message = decode(NAME, payload, SshPopPayload)
        self._cert = verify_host_certificate(
            message, self._server.authorities, self._server.domain, self._env.clock()
        )
        return node_public_key(NAME, self._cert.public_key())

    def attested(self) -> AgentAttestation:
        assert self._cert is not None  # set by verify_evidence before any challenge
        td = self._env.trust_domain
        agent_id = agent_spiffe_id(td, NAME, fingerprint(self._cert))
        return AgentAttestation(agent_id, principal_selectors(self._cert), can_reattest=True)


class SshPopServer:
    def __init__(self, config: SshPopServerConfig, env: ServerEnvironment) -> None:
        self.authorities = load_authorities(config)
        self.domain = config.canonical_domain
        self.env = env

    def session(self) -> SshPopSession:
        return SshPopSession(self)


PLUGIN: Final = NodeAttestorPlugin(
    agent_config=SshPopAgentConfig,
    server_config=SshPopServerConfig,
    create_agent=SshPopAgent,
    create_server=SshPopServer,
    selector_keys={NAME: frozenset({"principal"})},
)
