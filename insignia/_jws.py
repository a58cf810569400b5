"""JWS primitives (RFC 7518): the hashes, curves and paddings of RS/ES/PS 256/384/512, and
base64url without padding; shared by the server's signing and the SDK's validation."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Final

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding

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
