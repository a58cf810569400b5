"""Proof of possession: the challenge-signature scheme x509pop and sshpop share.

The server sends a fresh random nonce and its trust domain; the agent signs
`"insignia <plugin> challenge v1\\0" || nonce || trust domain` with its node key. The label
binds the signature to this purpose and plugin, so a node key's signature here is never valid
as any other kind of signature (a TLS handshake, a JWT, the other plugin's challenge). The
nonce has a fixed length, so the concatenation is unambiguous.
"""

from __future__ import annotations

import secrets
from abc import ABC, abstractmethod
from typing import ClassVar, Final, Generic, TypeVar

import trio
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from insignia.attestors.interface import (
    AgentAttestation,
    AttestationError,
    Challenge,
    ServerEnvironment,
    Step,
)
from insignia.attestors.node.messages import Message, b64decode, b64encode, decode, encode
from insignia.spiffeid import TrustDomain

NONCE_BYTES: Final = 32

NodeKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
NodePublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey


class PopChallenge(Message, frozen=True, kw_only=True):
    nonce: str
    trust_domain: str


class PopResponse(Message, frozen=True, kw_only=True):
    signature: str


def signed_message(plugin: str, nonce: bytes, trust_domain: str) -> bytes:
    return f"insignia {plugin} challenge v1\0".encode() + nonce + trust_domain.encode()


def _ec_hash(curve: ec.EllipticCurve) -> hashes.HashAlgorithm:
    return {"secp384r1": hashes.SHA384(), "secp521r1": hashes.SHA512()}.get(
        curve.name, hashes.SHA256()
    )


def _pss() -> padding.PSS:
    return padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.DIGEST_LENGTH)


def sign(key: NodeKey, message: bytes) -> bytes:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return key.sign(message, ec.ECDSA(_ec_hash(key.curve)))
    if isinstance(key, rsa.RSAPrivateKey):
        return key.sign(message, _pss(), hashes.SHA256())
    return key.sign(message)


def verify(key: NodePublicKey, signature: bytes, message: bytes) -> None:
    """Raises cryptography's InvalidSignature unless `signature` is `key`'s over `message`."""
    if isinstance(key, ec.EllipticCurvePublicKey):
        key.verify(signature, message, ec.ECDSA(_ec_hash(key.curve)))
    elif isinstance(key, rsa.RSAPublicKey):
        key.verify(signature, message, _pss(), hashes.SHA256())
    else:
        key.verify(signature, message)


def new_challenge(trust_domain: str) -> tuple[bytes, bytes]:
    """(nonce, challenge message) for one attestation."""
    nonce = secrets.token_bytes(NONCE_BYTES)
    return nonce, encode(PopChallenge(nonce=b64encode(nonce), trust_domain=trust_domain))


def answer_challenge(plugin: str, key: NodeKey, challenge: bytes, trust_domain: str) -> bytes:
    """The agent's signed response; refuses a challenge meant for another trust domain (a
    foreign server relaying our proof to its own)."""
    message = decode(plugin, challenge, PopChallenge)
    nonce = b64decode(plugin, "nonce", message.nonce)
    if len(nonce) != NONCE_BYTES:
        raise AttestationError(plugin, f"nonce is {len(nonce)} bytes; expected {NONCE_BYTES}")
    if message.trust_domain != trust_domain:
        raise AttestationError(
            plugin,
            f"challenge is for trust domain {message.trust_domain!r}, not ours ({trust_domain!r})",
        )
    signature = sign(key, signed_message(plugin, nonce, trust_domain))
    return encode(PopResponse(signature=b64encode(signature)))


def check_response(
    plugin: str, key: NodePublicKey, nonce: bytes, trust_domain: str, response: bytes
) -> None:
    """AttestationError unless `response` signs this nonce with `key`."""
    signature = b64decode(plugin, "signature", decode(plugin, response, PopResponse).signature)
    try:
        verify(key, signature, signed_message(plugin, nonce, trust_domain))
    except InvalidSignature as exc:
        raise AttestationError(
            plugin, "challenge signature does not verify with the node's key"
        ) from exc


AgentConfig = TypeVar("AgentConfig")


class PopAgent(ABC, Generic[AgentConfig]):
    """Agent side of a proof-of-possession attestor: send the evidence, then sign the server's
    challenge with the node key the evidence names. Plugins supply only the evidence."""

    plugin: ClassVar[str]

    def __init__(self, config: AgentConfig, trust_domain: TrustDomain) -> None:
        self._config = config
        self._trust_domain = trust_domain
        self._key: NodeKey | None = None

    @abstractmethod
    def evidence(self) -> tuple[bytes, NodeKey]:
        """The payload and the node key it vouches for (blocking: runs in a thread)."""

    async def payload(self) -> bytes:
        payload, self._key = await trio.to_thread.run_sync(self.evidence)
        return payload

    async def answer(self, challenge: bytes) -> bytes:
        if self._key is None:
            raise AttestationError(self.plugin, "challenge received before the payload was sent")
        return answer_challenge(self.plugin, self._key, challenge, self._trust_domain.name)


class PopSession(ABC):
    """Server side of one proof-of-possession attestation: verify the evidence, send one nonce,
    check its signature. Single use; the nonce is forgotten before the signature is checked,
    so each challenge is answerable once. Plugins supply the evidence check and the identity."""

    plugin: ClassVar[str]

    def __init__(self, env: ServerEnvironment) -> None:
        self._env = env
        self._begun = False
        self._nonce: bytes | None = None
        self._key: NodePublicKey | None = None

    @abstractmethod
    def verify_evidence(self, payload: bytes) -> NodePublicKey:
        """Check the evidence (AttestationError if untrusted); the key the node must hold."""

    @abstractmethod
    def attested(self) -> AgentAttestation:
        """The agent's identity, once the node proved it holds the key."""

    async def begin(self, payload: bytes) -> Step:
        if self._begun:
            raise AttestationError(self.plugin, "session already used")
        self._begun = True
        self._key = self.verify_evidence(payload)
        self._nonce, challenge = new_challenge(self._env.trust_domain.name)
        return Challenge(challenge)

    async def answer(self, response: bytes) -> Step:
        nonce, self._nonce = self._nonce, None  # single use, whatever happens next
        if nonce is None or self._key is None:
            raise AttestationError(self.plugin, "no challenge outstanding")
        check_response(self.plugin, self._key, nonce, self._env.trust_domain.name, response)
        return self.attested()


def node_public_key(plugin: str, key: object) -> NodePublicKey:
    """`key` if pop can check signatures made with it, else AttestationError naming its type."""
    if not isinstance(key, NodePublicKey):
        raise AttestationError(plugin, f"node key is {type(key).__name__}; not supported")
    return key
