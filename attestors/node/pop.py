"""Proof of possession: the challenge-signature scheme x509pop and sshpop share.

The server sends a fresh random nonce and its trust domain; the agent signs
`"insignia <plugin> challenge v1\\0" || nonce || trust domain` with its node key. The label
binds the signature to this purpose and plugin, so a node key's signature here is never valid
as any other kind of signature (a TLS handshake, a JWT, the other plugin's challenge). The
nonce has a fixed length, so the concatenation is unambiguous.
"""

from __future__ import annotations

import secrets
from typing import Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from attestors.interface import AttestationError
from attestors.node.messages import Message, b64decode, b64encode, decode, encode

NONCE_BYTES: Final = 32

NodeKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
NodePublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey


class PopChallenge(Message):
    nonce: str
    trust_domain: str


class PopResponse(Message):
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
