"""Key types Insignia issues and accepts, their encodings, and the signature algorithm each uses.

Only the key types SPIRE offers are supported (EC P-256/P-384, RSA 2048/4096): every key that
enters through a decoder is checked against that list, so an Ed25519 or 1024-bit RSA key is
refused at the boundary instead of failing later inside a signer or a peer's verifier.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Mapping

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey


class KeyType(enum.Enum):
    EC_P256 = "ec-p256"
    EC_P384 = "ec-p384"
    RSA_2048 = "rsa-2048"
    RSA_4096 = "rsa-4096"


class InvalidKey(Exception):
    """Key material that cannot be decoded or is not one of the supported `KeyType`s."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


_SUPPORTED = "expected one of " + ", ".join(k.value for k in KeyType)


_CURVES: dict[KeyType, ec.EllipticCurve] = {
    KeyType.EC_P256: ec.SECP256R1(),
    KeyType.EC_P384: ec.SECP384R1(),
}
_RSA_BITS: dict[KeyType, int] = {KeyType.RSA_2048: 2048, KeyType.RSA_4096: 4096}
_RSA_JWT_ALGS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})


def generate_key(key_type: KeyType) -> PrivateKey:
    """A fresh private key of `key_type` (RSA-4096 takes ~1 s: run it in a thread from trio)."""
    if key_type in _CURVES:
        return ec.generate_private_key(_CURVES[key_type])
    return rsa.generate_private_key(public_exponent=65537, key_size=_RSA_BITS[key_type])


def key_type_of(key: PrivateKey | PublicKey) -> KeyType:
    """The `KeyType` of a private or public key; InvalidKey for curves or sizes we do not use."""
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        for kt, curve in _CURVES.items():
            if key.curve.name == curve.name:
                return kt
        raise InvalidKey(f"unsupported EC curve {key.curve.name}; {_SUPPORTED}")
    if isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey):
        for kt, bits in _RSA_BITS.items():
            if key.key_size == bits:
                return kt
        raise InvalidKey(f"unsupported RSA key size {key.key_size}; {_SUPPORTED}")
    raise InvalidKey(f"unsupported key type {type(key).__name__}; {_SUPPORTED}")


def _checked_private(key: object) -> PrivateKey:
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise InvalidKey(f"unsupported private key type {type(key).__name__}; {_SUPPORTED}")
    key_type_of(key)
    return key


def _checked_public(key: object) -> PublicKey:
    if not isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
        raise InvalidKey(f"unsupported public key type {type(key).__name__}; {_SUPPORTED}")
    key_type_of(key)
    return key


def private_key_to_der(key: PrivateKey) -> bytes:
    """Unencrypted PKCS#8 DER: the Workload API's `x509_svid_key` encoding."""
    return key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def private_key_to_pem(key: PrivateKey) -> bytes:
    """Unencrypted PKCS#8 PEM ("BEGIN PRIVATE KEY"), for key files on disk."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def private_key_from_der(data: bytes) -> PrivateKey:
    try:
        key = serialization.load_der_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise InvalidKey(f"not an unencrypted PKCS#8/SEC1/PKCS#1 DER private key: {exc}") from exc
    return _checked_private(key)


def private_key_from_pem(data: bytes) -> PrivateKey:
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise InvalidKey(f"not an unencrypted PEM private key: {exc}") from exc
    return _checked_private(key)


def public_key_to_der(key: CertificatePublicKeyTypes) -> bytes:
    """SubjectPublicKeyInfo DER (the form SPIRE stores JWT signing keys in). Any key a
    certificate can carry serialises this way, so no narrowing to PublicKey is needed."""
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def public_key_from_der(data: bytes) -> PublicKey:
    try:
        key = serialization.load_der_public_key(data)
    except (ValueError, TypeError) as exc:
        raise InvalidKey(f"not a SubjectPublicKeyInfo DER public key: {exc}") from exc
    return _checked_public(key)


def public_key_fingerprint(key: PublicKey) -> str:
    """Lower-case hex SHA-256 of the SubjectPublicKeyInfo: a stable name for logs and kids."""
    return hashlib.sha256(public_key_to_der(key)).hexdigest()


def x509_signature_hash(key: PrivateKey | PublicKey) -> hashes.SHA256 | hashes.SHA384:
    """Hash for certificates signed by `key`: SHA-384 for P-384 (matching curve strength)."""
    if key_type_of(key) is KeyType.EC_P384:
        return hashes.SHA384()
    return hashes.SHA256()


def jwt_algorithm(key: PrivateKey | PublicKey, alg: str | None = None) -> str:
    """The JWS `alg` for `key`: ES256/ES384 for EC, RS256 for RSA unless another RS*/PS* is asked.

    An explicit `alg` that does not fit the key (ES256 on P-384, ES* on RSA, HS*, EdDSA,
    none) raises InvalidKey, so a misconfiguration cannot produce an unverifiable token.
    """
    kt = key_type_of(key)
    natural = {KeyType.EC_P256: "ES256", KeyType.EC_P384: "ES384"}.get(kt, "RS256")
    if alg is None or alg == natural:
        return natural
    if kt in _RSA_BITS and alg in _RSA_JWT_ALGS:
        return alg
    raise InvalidKey(f"JWT algorithm {alg!r} does not fit a {kt.value} key (use {natural})")


# Private JWK members (RFC 7518 §6.2.2, §6.3.2) besides the public ones.
_EC_PRIVATE = ("d",)
_RSA_PRIVATE = ("d", "p", "q", "dp", "dq", "qi")


def private_key_to_jwk(key: PrivateKey, alg: str | None = None) -> dict[str, str]:
    """The private JWK of `key` (public members, private ones, and `alg`): the form the
    Workload API hands a WIT-SVID's key in. `alg` defaults to the key's natural one."""
    from insignia.bundle import b64url_uint, public_key_to_jwk  # imports nothing of ours

    jwk = public_key_to_jwk(_checked_private(key).public_key())
    jwk["alg"] = jwt_algorithm(key, alg)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        jwk["d"] = b64url_uint(key.private_numbers().private_value, (key.curve.key_size + 7) // 8)
    else:
        nums = key.private_numbers()
        values = (nums.d, nums.p, nums.q, nums.dmp1, nums.dmq1, nums.iqmp)
        jwk.update((name, b64url_uint(v)) for name, v in zip(_RSA_PRIVATE, values, strict=True))
    return jwk


def private_key_from_jwk(jwk: Mapping[str, object]) -> tuple[PrivateKey, str]:
    """The private key and `alg` of a private JWK; InvalidKey naming the bad member. The
    private members must match the public ones (a mismatched pair would sign proofs no one
    can verify)."""
    from insignia.bundle import b64url_decode, public_key_from_jwk

    try:
        public = public_key_from_jwk(jwk)
        members = _EC_PRIVATE if isinstance(public, ec.EllipticCurvePublicKey) else _RSA_PRIVATE
        values = {}
        for name in members:
            text = jwk.get(name)
            if not isinstance(text, str) or not text:
                raise ValueError(f"member {name!r} must be a non-empty string")
            values[name] = int.from_bytes(b64url_decode(text), "big")
        key: PrivateKey
        if isinstance(public, ec.EllipticCurvePublicKey):
            key = ec.derive_private_key(values["d"], public.curve)
        else:
            numbers = rsa.RSAPrivateNumbers(
                values["p"],
                values["q"],
                values["d"],
                values["dp"],
                values["dq"],
                values["qi"],
                public.public_numbers(),
            )
            key = numbers.private_key()
    except ValueError as exc:  # binascii.Error included
        raise InvalidKey(f"private JWK: {exc}") from exc
    if public_key_to_der(key.public_key()) != public_key_to_der(public):
        raise InvalidKey("private JWK: the private members do not match the public key")
    alg = jwk.get("alg")
    if not isinstance(alg, str):
        raise InvalidKey("private JWK: member 'alg' must name the signing algorithm")
    return _checked_private(key), jwt_algorithm(key, alg)
