"""JWS primitives (RFC 7518): the hashes, curves and paddings of RS/ES/PS 256/384/512, the
signature encoding (raw r||s for ECDSA), and base64url without padding; shared by the server's
signing, the SDK's validation and the SDK's Workload Proof Tokens."""

from __future__ import annotations

import base64
from collections.abc import Callable, Mapping
from typing import Final

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

HASHES: Final[Mapping[str, hashes.SHA256 | hashes.SHA384 | hashes.SHA512]] = {
    "256": hashes.SHA256(),
    "384": hashes.SHA384(),
    "512": hashes.SHA512(),
}
# alg -> (curve name, coordinate bytes) for ECDSA (RFC 7518 §3.4)
EC_PARAMS: Final = {
    "ES256": ("secp256r1", 32),
    "ES384": ("secp384r1", 48),
    "ES512": ("secp521r1", 66),
}
ECDSA: Final = {alg: ec.ECDSA(HASHES[alg[2:]]) for alg in EC_PARAMS}
PKCS1: Final = padding.PKCS1v15()
PSS: Final = {
    f"PS{n}": padding.PSS(mgf=padding.MGF1(h), salt_length=h.digest_size) for n, h in HASHES.items()
}


def b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def jws_signature(
    alg: str, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
) -> Callable[[bytes], bytes]:
    """A signing function for `alg` and `key`, producing the JWS signature encoding."""
    if isinstance(key, ec.EllipticCurvePrivateKey):
        ecdsa, size = ECDSA[alg], EC_PARAMS[alg][1]

        def sign_ec(msg: bytes) -> bytes:
            r, s = decode_dss_signature(key.sign(msg, ecdsa))
            return r.to_bytes(size, "big") + s.to_bytes(size, "big")

        return sign_ec
    pad = PSS[alg] if alg.startswith("PS") else PKCS1
    digest = HASHES[alg[2:]]
    return lambda msg: key.sign(msg, pad, digest)
