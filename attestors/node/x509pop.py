"""Node attestor `x509pop`: proof that the node holds the key of a certificate from a known CA.

Exchange (each message JSON, see `insignia.attestors.node.messages`):

1. agent -> server: the node certificate chain (leaf first, DER, base64).
2. server: verifies the chain to one of its configured CAs at the current time (expiry of
   every certificate checked), requires the leaf's KeyUsage to have digitalSignature and the
   leaf not to be a CA, then sends a fresh 32-byte random nonce and its trust domain.
3. agent: refuses a challenge for another trust domain (a relay from a foreign server), and
   signs it with the node key (EC, RSA or Ed25519; see `insignia.attestors.node.pop`).
4. server: verifies the signature with the leaf's public key. The nonce is forgotten before
   verification, so each challenge is answerable once.

Agent ID `spiffe://<td>/insignia/agent/x509pop/<sha1 hex of leaf DER>` (SPIRE's form); node
selectors `subject:cn`, `ca:fingerprint` (every CA on the verified chain, as SPIRE),
`serialnumber` and `san:dns`. Holding the key again later proves the same identity, so the
agent may re-attest.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated, Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    PolicyBuilder,
    Store,
    VerificationError,
)
from msgspec import Meta

from insignia.attestors.interface import (
    AgentAttestation,
    AttestationError,
    NodeAttestorPlugin,
    PluginConfig,
    ServerEnvironment,
)
from insignia.attestors.node.messages import Message, b64decode, b64encode, decode, encode
from insignia.attestors.node.pop import (
    NodeKey,
    NodePublicKey,
    PopAgent,
    PopSession,
    node_public_key,
)
from insignia.daemon.reserved_ids import agent_spiffe_id
from insignia.keys import public_key_to_der
from insignia.selectors import Selector
from insignia.x509svid import is_ca

NAME: Final = "x509pop"
MAX_CHAIN: Final = 8


class X509PopPayload(Message, frozen=True, kw_only=True):
    certificates: Annotated[list[str], Meta(min_length=1, max_length=MAX_CHAIN)]


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-1 of the DER: SPIRE's x509pop naming (an identifier, not a security boundary)."""
    return cert.fingerprint(hashes.SHA1()).hex()  # noqa: S303


# --- agent side -------------------------------------------------------------------------------


class X509PopAgentConfig(PluginConfig, frozen=True, kw_only=True):
    private_key_path: Path
    #: PEM: the node certificate first, then any intermediates.
    certificate_path: Path
    intermediates_path: Path | None = None


def load_node_credentials(config: X509PopAgentConfig) -> tuple[list[x509.Certificate], NodeKey]:
    """The chain and key from disk, checked to belong together (blocking: run in a thread)."""
    try:
        chain = x509.load_pem_x509_certificates(config.certificate_path.read_bytes())
        if config.intermediates_path is not None:
            chain += x509.load_pem_x509_certificates(config.intermediates_path.read_bytes())
        key = serialization.load_pem_private_key(config.private_key_path.read_bytes(), None)
    except (OSError, ValueError, TypeError) as exc:
        raise AttestationError(NAME, f"cannot load node certificate or key: {exc}") from exc
    if not isinstance(key, NodeKey):
        raise AttestationError(NAME, f"node key is {type(key).__name__}; not supported")
    if public_key_to_der(key.public_key()) != public_key_to_der(chain[0].public_key()):
        raise AttestationError(
            NAME, f"{config.private_key_path} is not the key of {config.certificate_path}"
        )
    return chain, key


class X509PopAgent(PopAgent[X509PopAgentConfig]):
    plugin = NAME

    def evidence(self) -> tuple[bytes, NodeKey]:
        chain, key = load_node_credentials(self._config)
        der = serialization.Encoding.DER
        certificates = [b64encode(c.public_bytes(der)) for c in chain]
        return encode(X509PopPayload(certificates=certificates)), key


# --- server side ------------------------------------------------------------------------------


class X509PopServerConfig(PluginConfig, frozen=True, kw_only=True):
    #: PEM files of the CAs that issue node certificates.
    ca_bundle_paths: Annotated[tuple[Path, ...], Meta(min_length=1)]


def load_ca_bundle(paths: tuple[Path, ...]) -> list[x509.Certificate]:
    cas: list[x509.Certificate] = []
    for path in paths:
        try:
            certs = x509.load_pem_x509_certificates(path.read_bytes())
        except (OSError, ValueError) as exc:
            raise ValueError(f"cannot load CA bundle {path}: {exc}") from exc
        for cert in certs:
            if not is_ca(cert):
                raise ValueError(
                    f"{path}: {cert.subject.rfc4514_string()!r} is not a CA (BasicConstraints)"
                )
        cas += certs
    return cas


def _require_ca(policy: object, cert: x509.Certificate, ext: x509.BasicConstraints) -> None:
    if not ext.ca:
        raise ValueError("issuer is not a CA")


def _ca_key_usage(policy: object, cert: x509.Certificate, ext: x509.KeyUsage | None) -> None:
    if ext is not None and not ext.key_cert_sign:
        raise ValueError("issuer KeyUsage lacks keyCertSign")


def _leaf_key_usage(policy: object, cert: x509.Certificate, ext: x509.KeyUsage) -> None:
    if not ext.digital_signature:
        raise ValueError("node certificate KeyUsage lacks digitalSignature")


def _leaf_not_ca(policy: object, cert: x509.Certificate, ext: x509.BasicConstraints | None) -> None:
    if ext is not None and ext.ca:
        raise ValueError("node certificate is a CA")


# CA policy looser than WebPKI's on purpose: node CAs made with `openssl req -x509` carry no
# KeyUsage; when they do, it must allow certificate signing.
_CA_POLICY: Final = (
    ExtensionPolicy.permit_all()
    .require_present(x509.BasicConstraints, Criticality.AGNOSTIC, _require_ca)
    .may_be_present(x509.KeyUsage, Criticality.AGNOSTIC, _ca_key_usage)
)
_LEAF_POLICY: Final = (
    ExtensionPolicy.permit_all()
    .require_present(x509.KeyUsage, Criticality.AGNOSTIC, _leaf_key_usage)
    .may_be_present(x509.BasicConstraints, Criticality.AGNOSTIC, _leaf_not_ca)
)


def verify_node_chain(
    chain: list[x509.Certificate], store: Store, now: datetime
) -> list[x509.Certificate]:
    """The verified path leaf -> trusted CA, or AttestationError saying why there is none."""
    verifier = (
        PolicyBuilder()
        .store(store)
        .time(now)
        .max_chain_depth(MAX_CHAIN)
        .extension_policies(ca_policy=_CA_POLICY, ee_policy=_LEAF_POLICY)
        .build_client_verifier()
    )
    try:
        return verifier.verify(chain[0], chain[1:]).chain
    except VerificationError as exc:
        raise AttestationError(NAME, f"node certificate not trusted: {exc}") from exc


def node_selectors(path: list[x509.Certificate]) -> tuple[Selector, ...]:
    leaf = path[0]
    values = [
        f"subject:cn:{attr.value!s}"
        for attr in leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    ]
    values += [f"ca:fingerprint:{fingerprint(ca)}" for ca in path[1:]]
    serial = format(leaf.serial_number, "x")
    values.append(f"serialnumber:{serial.zfill(len(serial) + len(serial) % 2)}")
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        values += [f"san:dns:{name}" for name in san.get_values_for_type(x509.DNSName)]
    except x509.ExtensionNotFound:
        pass
    return tuple(dict.fromkeys(Selector(NAME, v) for v in values))


class X509PopSession(PopSession):
    plugin = NAME

    def __init__(self, store: Store, env: ServerEnvironment) -> None:
        super().__init__(env)
        self._store = store
        self._path: list[x509.Certificate] = []

    def verify_evidence(self, payload: bytes) -> NodePublicKey:
        encoded = decode(NAME, payload, X509PopPayload).certificates
        try:
            chain = [
                x509.load_der_x509_certificate(b64decode(NAME, "certificate", c)) for c in encoded
            ]
        except ValueError as exc:
            raise AttestationError(NAME, f"certificate is not DER X.509: {exc}") from exc
        self._path = verify_node_chain(chain, self._store, self._env.clock())
        return node_public_key(NAME, self._path[0].public_key())

    def attested(self) -> AgentAttestation:
        leaf = self._path[0]
        if self._env.clock() > leaf.not_valid_after_utc:
            raise AttestationError(NAME, "node certificate expired during attestation")
        td = self._env.trust_domain
        agent_id = agent_spiffe_id(td, NAME, fingerprint(leaf))
        return AgentAttestation(agent_id, node_selectors(self._path), can_reattest=True)


class X509PopServer:
    def __init__(self, config: X509PopServerConfig, env: ServerEnvironment) -> None:
        self._store = Store(load_ca_bundle(config.ca_bundle_paths))
        self._env = env

    def session(self) -> X509PopSession:
        return X509PopSession(self._store, self._env)


PLUGIN: Final = NodeAttestorPlugin(
    agent_config=X509PopAgentConfig,
    server_config=X509PopServerConfig,
    create_agent=X509PopAgent,
    create_server=X509PopServer,
    selector_keys={NAME: frozenset({"subject", "ca", "serialnumber", "san"})},
)
