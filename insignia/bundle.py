"""Trust bundles: the X.509, JWT and WIT authorities that vouch for one trust domain's SVIDs.

Codecs cover every form a bundle travels in: the SPIFFE bundle format (a JWK Set with `use`,
`spiffe_sequence` and `spiffe_refresh_hint`, for federation and the datastore), PEM files on
disk, concatenated DER (Workload API X.509 bundles) and plain JWKS (Workload API JWT and WIT
bundles, OIDC-style verifiers). JWT and WIT signing keys share one `kid` space: a kid names one
key in the whole bundle (WIT-SVID §6.1), so a WIT key can never be taken for a JWT key.
Decoders refuse anything malformed with `InvalidBundle` naming what.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from insignia.spiffeid import TrustDomain

JwtPublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey

X509_SVID_USE = "x509-svid"
JWT_SVID_USE = "jwt-svid"
WIT_SVID_USE = "wit-svid"

# JWK curve name <-> cryptography curve and coordinate size (RFC 7518 §6.2.1).
_JWK_CURVES: dict[str, tuple[type[ec.EllipticCurve], int]] = {
    "P-256": (ec.SECP256R1, 32),
    "P-384": (ec.SECP384R1, 48),
    "P-521": (ec.SECP521R1, 66),
}
_CURVE_NAMES = {curve().name: (jwk_name, size) for jwk_name, (curve, size) in _JWK_CURVES.items()}
_MIN_RSA_BITS = 2048


class InvalidBundle(ValueError):
    """A bundle document or bundle value that is malformed; `reason` says what was wrong."""

    def __init__(self, trust_domain: TrustDomain | str | None, reason: str) -> None:
        where = f"bundle for {trust_domain}" if trust_domain is not None else "bundle"
        super().__init__(f"invalid {where}: {reason}")
        self.trust_domain = trust_domain
        self.reason = reason


class BundleSource(Protocol):
    """Anything that can hand out the bundle of a trust domain (None if it has none)."""

    def get_bundle_for_trust_domain(self, trust_domain: TrustDomain) -> Bundle | None: ...


# ---------------------------------------------------------------------------------------
# small encoders shared by the codecs


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Strict unpadded base64url (RFC 7515 §2): stray characters or padding are errors."""
    if "=" in text or "+" in text or "/" in text:
        raise ValueError("not unpadded base64url: contains '=', '+' or '/'")
    std = text.replace("-", "+").replace("_", "/")
    return binascii.a2b_base64(std + "=" * (-len(std) % 4), strict_mode=True)


def b64url_uint(value: int, size: int | None = None) -> str:
    """Unpadded base64url of a big-endian unsigned integer, `size` bytes long when given."""
    length = size if size is not None else max(1, (value.bit_length() + 7) // 8)
    return _b64url(value.to_bytes(length, "big"))


def public_key_to_jwk(key: JwtPublicKey) -> dict[str, str]:
    """RFC 7518 JWK members for `key`; EC coordinates are fixed-length, as JOSE requires."""
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in _CURVE_NAMES:
            raise ValueError(f"EC curve {key.curve.name} has no JWK name")
        crv, size = _CURVE_NAMES[key.curve.name]
        nums = key.public_numbers()
        x, y = b64url_uint(nums.x, size), b64url_uint(nums.y, size)
        return {"kty": "EC", "crv": crv, "x": x, "y": y}
    nums_rsa = key.public_numbers()
    return {"kty": "RSA", "n": b64url_uint(nums_rsa.n), "e": b64url_uint(nums_rsa.e)}


def public_key_from_jwk(jwk: Mapping[str, Any]) -> JwtPublicKey:
    """The EC or RSA public key a JWK describes; ValueError naming the bad member."""
    kty = jwk.get("kty")
    try:
        if kty == "EC":
            crv = jwk.get("crv")
            if not isinstance(crv, str) or crv not in _JWK_CURVES:
                raise ValueError(f"unsupported EC crv {crv!r}; expected P-256, P-384 or P-521")
            curve, size = _JWK_CURVES[crv]
            coords = [b64url_decode(_str_member(jwk, m)) for m in ("x", "y")]
            if any(len(c) != size for c in coords):
                raise ValueError(f"EC x and y must be {size} bytes for {crv}")
            x, y = (int.from_bytes(c, "big") for c in coords)
            return ec.EllipticCurvePublicNumbers(x, y, curve()).public_key()
        if kty == "RSA":
            n, e = (int.from_bytes(b64url_decode(_str_member(jwk, m)), "big") for m in "ne")
            key = rsa.RSAPublicNumbers(e, n).public_key()
            if key.key_size < _MIN_RSA_BITS:
                raise ValueError(f"RSA key of {key.key_size} bits; expected >= {_MIN_RSA_BITS}")
            return key
    except binascii.Error as exc:
        raise ValueError(f"bad base64url in key: {exc}") from exc
    raise ValueError(f"unsupported kty {kty!r}; expected EC or RSA")


def _str_member(obj: Mapping[str, Any], name: str) -> str:
    value = obj.get(name)
    if not isinstance(value, str) or not value:
        raise ValueError(f"member {name!r} must be a non-empty string")
    return value


def load_der_certificates(data: bytes) -> tuple[x509.Certificate, ...]:
    """Certificates from concatenated DER; ValueError naming the byte offset of garbage."""
    certs = []
    pos = 0
    while pos < len(data):
        if data[pos] != 0x30 or pos + 2 > len(data):
            raise ValueError(f"no DER SEQUENCE at byte {pos}")
        first = data[pos + 1]
        if first < 0x80:
            header, length = 2, first
        else:
            n = first & 0x7F
            if not 1 <= n <= 4 or pos + 2 + n > len(data):
                raise ValueError(f"bad DER length at byte {pos}")
            header, length = 2 + n, int.from_bytes(data[pos + 2 : pos + 2 + n], "big")
        end = pos + header + length
        if end > len(data):
            raise ValueError(f"DER certificate at byte {pos} is truncated")
        try:
            certs.append(x509.load_der_x509_certificate(data[pos:end]))
        except ValueError as exc:
            raise ValueError(f"certificate at byte {pos} is not valid X.509: {exc}") from exc
        pos = end
    if not certs:
        raise ValueError("no certificates")
    return tuple(certs)


# ---------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=True)
class Bundle:
    """The authorities of one trust domain, with the SPIFFE bundle sequence and refresh hint.

    `jwt_authorities` and `wit_authorities` map key ID to public key (no kid in both); they
    are copied into read-only mappings. A Bundle is itself a `BundleSource` for its own trust
    domain.
    """

    trust_domain: TrustDomain
    x509_authorities: tuple[x509.Certificate, ...] = ()
    jwt_authorities: Mapping[str, JwtPublicKey] = field(default_factory=dict)
    sequence: int = 0
    refresh_hint: int | None = None
    wit_authorities: Mapping[str, JwtPublicKey] = field(default_factory=dict)

    def __post_init__(self) -> None:
        td = self.trust_domain
        object.__setattr__(self, "x509_authorities", tuple(self.x509_authorities))
        object.__setattr__(self, "jwt_authorities", MappingProxyType(dict(self.jwt_authorities)))
        object.__setattr__(self, "wit_authorities", MappingProxyType(dict(self.wit_authorities)))
        for cert in self.x509_authorities:
            if not isinstance(cert, x509.Certificate):
                raise InvalidBundle(td, f"x509 authority {cert!r} is not a certificate")
        for what, keys in (("JWT", self.jwt_authorities), ("WIT", self.wit_authorities)):
            for kid, key in keys.items():
                if not isinstance(kid, str) or not kid:
                    raise InvalidBundle(
                        td, f"{what} authority key ID {kid!r} must be a non-empty string"
                    )
                if not isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
                    raise InvalidBundle(
                        td, f"{what} authority {kid!r} is not an EC or RSA public key"
                    )
        shared = self.jwt_authorities.keys() & self.wit_authorities.keys()
        if shared:
            raise InvalidBundle(td, f"kid {min(shared)!r} names both a JWT and a WIT authority")
        if isinstance(self.sequence, bool) or not isinstance(self.sequence, int):
            raise InvalidBundle(td, f"sequence {self.sequence!r} must be an integer")
        if not 0 <= self.sequence < 2**64:
            raise InvalidBundle(td, f"sequence {self.sequence} must be in [0, 2**64)")
        hint = self.refresh_hint
        if hint is not None and (isinstance(hint, bool) or not isinstance(hint, int) or hint <= 0):
            raise InvalidBundle(td, f"refresh hint {hint!r} must be a positive number of seconds")

    __hash__ = None  # type: ignore[assignment]  # holds a mapping: equality only

    def get_bundle_for_trust_domain(self, trust_domain: TrustDomain) -> Bundle | None:
        return self if trust_domain == self.trust_domain else None

    # --- SPIFFE bundle format -------------------------------------------------------

    def to_spiffe(self) -> bytes:
        """The SPIFFE bundle document (JWK Set with `use`, sequence and refresh hint)."""
        keys: list[dict[str, Any]] = []
        for cert in self.x509_authorities:
            jwk: dict[str, Any] = public_key_to_jwk(_jwt_key(cert))
            jwk["use"] = X509_SVID_USE
            jwk["x5c"] = [base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()]
            keys.append(jwk)
        for kid, key in self.jwt_authorities.items():
            keys.append({**public_key_to_jwk(key), "use": JWT_SVID_USE, "kid": kid})
        for kid, key in self.wit_authorities.items():
            keys.append({**public_key_to_jwk(key), "use": WIT_SVID_USE, "kid": kid})
        doc: dict[str, Any] = {"keys": keys, "spiffe_sequence": self.sequence}
        if self.refresh_hint is not None:
            doc["spiffe_refresh_hint"] = self.refresh_hint
        return json.dumps(doc, indent=2).encode()

    @classmethod
    def parse_spiffe(cls, trust_domain: TrustDomain, data: bytes | str) -> Bundle:
        """Decode a SPIFFE bundle; keys with an unknown `use` or `kty` are ignored (spec §4)."""
        doc = _json_object(trust_domain, data)
        keys = doc.get("keys")
        if not isinstance(keys, list):
            raise InvalidBundle(trust_domain, "'keys' must be present and be a list")
        x509_authorities: list[x509.Certificate] = []
        by_use: dict[str, dict[str, JwtPublicKey]] = {JWT_SVID_USE: {}, WIT_SVID_USE: {}}
        kids: set[str] = set()
        for i, jwk in enumerate(keys):
            if not isinstance(jwk, dict):
                raise InvalidBundle(trust_domain, f"key {i} is not a JSON object")
            use = jwk.get("use")
            if not isinstance(use, str) or not use:
                raise InvalidBundle(trust_domain, f"key {i} has no 'use'")
            if use not in (X509_SVID_USE, *by_use) or jwk.get("kty") not in ("EC", "RSA"):
                continue
            try:
                key = public_key_from_jwk(jwk)
                if use == X509_SVID_USE:
                    x509_authorities.append(_x5c_certificate(jwk, key))
                else:
                    kid = _str_member(jwk, "kid")
                    if kid in kids:
                        raise ValueError(f"duplicate kid {kid!r}")
                    kids.add(kid)
                    by_use[use][kid] = key
            except ValueError as exc:
                raise InvalidBundle(trust_domain, f"key {i} ({use}): {exc}") from exc
        return cls(
            trust_domain,
            tuple(x509_authorities),
            by_use[JWT_SVID_USE],
            _optional_int(trust_domain, doc, "spiffe_sequence") or 0,
            _optional_int(trust_domain, doc, "spiffe_refresh_hint"),
            by_use[WIT_SVID_USE],
        )

    # --- X.509 authorities as PEM or concatenated DER -------------------------------

    def x509_pem(self) -> bytes:
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in self.x509_authorities)

    def x509_der(self) -> bytes:
        """Concatenated DER, the Workload API's X.509 bundle encoding."""
        return b"".join(c.public_bytes(serialization.Encoding.DER) for c in self.x509_authorities)

    @classmethod
    def parse_pem(cls, trust_domain: TrustDomain, data: bytes) -> Bundle:
        try:
            certs = x509.load_pem_x509_certificates(data)
        except ValueError as exc:
            raise InvalidBundle(trust_domain, f"not PEM certificates: {exc}") from exc
        return cls(trust_domain, tuple(certs))

    @classmethod
    def parse_der(cls, trust_domain: TrustDomain, data: bytes) -> Bundle:
        try:
            return cls(trust_domain, load_der_certificates(data))
        except ValueError as exc:
            raise InvalidBundle(trust_domain, f"not concatenated DER certificates: {exc}") from exc

    # --- JWT authorities as plain JWKS ----------------------------------------------

    def jwks(self) -> bytes:
        """RFC 7517 JWKS of the JWT authorities, every key with its `kid`."""
        keys = [{**public_key_to_jwk(k), "kid": kid} for kid, k in self.jwt_authorities.items()]
        return json.dumps({"keys": keys}, separators=(",", ":")).encode()

    def wit_jwks(self) -> str:
        """RFC 7517 JWKS of the WIT authorities (FetchWITBundles), each with `kid` and
        `use` = "wit-svid"; `{"keys": []}` when the trust domain signs no WIT-SVIDs."""
        keys = [
            {**public_key_to_jwk(k), "use": WIT_SVID_USE, "kid": kid}
            for kid, k in self.wit_authorities.items()
        ]
        return json.dumps({"keys": keys}, separators=(",", ":"))

    @classmethod
    def parse_wit_jwks(cls, trust_domain: TrustDomain, data: bytes | str) -> Bundle:
        """WIT authorities from a JWKS: only keys with `use` = "wit-svid" (WIT-SVID §6.2)."""
        jwt_only = cls.parse_jwks(trust_domain, data, use=WIT_SVID_USE)
        return cls(trust_domain, wit_authorities=jwt_only.jwt_authorities)

    @classmethod
    def parse_jwks(
        cls, trust_domain: TrustDomain, data: bytes | str, *, use: str = JWT_SVID_USE
    ) -> Bundle:
        """JWT authorities from a plain JWKS (keys of `use`, or "sig" for JWT-SVIDs); every
        key needs a unique `kid`."""
        accepted = ("sig", JWT_SVID_USE) if use == JWT_SVID_USE else (use,)
        doc = _json_object(trust_domain, data)
        keys = doc.get("keys")
        if not isinstance(keys, list):
            raise InvalidBundle(trust_domain, "'keys' must be present and be a list")
        authorities: dict[str, JwtPublicKey] = {}
        for i, jwk in enumerate(keys):
            try:
                if not isinstance(jwk, dict):
                    raise ValueError("not a JSON object")
                if jwk.get("use", "sig") not in accepted:
                    continue  # an encryption (or WIT) key has no business verifying a JWT-SVID
                if jwk.get("kty") not in ("EC", "RSA"):
                    continue  # RFC 7517 §5: ignore keys of unknown type
                kid = _str_member(jwk, "kid")
                if kid in authorities:
                    raise ValueError(f"duplicate kid {kid!r}")
                authorities[kid] = public_key_from_jwk(jwk)
            except ValueError as exc:
                raise InvalidBundle(trust_domain, f"key {i}: {exc}") from exc
        return cls(trust_domain, jwt_authorities=authorities)


def _jwt_key(cert: x509.Certificate) -> JwtPublicKey:
    key = cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
        raise InvalidBundle(None, f"authority key {type(key).__name__} has no EC/RSA JWK form")
    return key


def _x5c_certificate(jwk: Mapping[str, Any], key: JwtPublicKey) -> x509.Certificate:
    x5c = jwk.get("x5c")
    if not isinstance(x5c, list) or len(x5c) != 1 or not isinstance(x5c[0], str):
        raise ValueError("'x5c' must hold exactly one base64 DER certificate")
    try:
        cert = x509.load_der_x509_certificate(base64.b64decode(x5c[0], validate=True))
    except ValueError as exc:  # binascii.Error included
        raise ValueError(f"'x5c' is not a base64 DER certificate: {exc}") from exc
    if cert.public_key() != key:
        raise ValueError("the JWK key parameters do not match the x5c certificate's key")
    return cert


def _json_object(trust_domain: TrustDomain, data: bytes | str) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise InvalidBundle(trust_domain, f"not JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise InvalidBundle(trust_domain, "document is not a JSON object")
    return doc


def _optional_int(trust_domain: TrustDomain, doc: Mapping[str, Any], name: str) -> int | None:
    value = doc.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidBundle(trust_domain, f"{name!r} must be an integer, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class BundleSet:
    """An immutable set of bundles keyed by trust domain; a `BundleSource` for all of them."""

    bundles: Mapping[TrustDomain, Bundle] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for td, b in self.bundles.items():
            if b.trust_domain != td:
                raise InvalidBundle(td, f"filed under {td} but is for {b.trust_domain}")
        object.__setattr__(self, "bundles", MappingProxyType(dict(self.bundles)))

    __hash__ = None  # type: ignore[assignment]

    @classmethod
    def of(cls, bundles: Iterable[Bundle]) -> BundleSet:
        """A set from bundles; two bundles for one trust domain is an error."""
        by_td: dict[TrustDomain, Bundle] = {}
        for b in bundles:
            if b.trust_domain in by_td:
                raise InvalidBundle(b.trust_domain, "two bundles for the same trust domain")
            by_td[b.trust_domain] = b
        return cls(by_td)

    def with_bundle(self, bundle: Bundle) -> BundleSet:
        """A copy with `bundle` added or replacing the one for its trust domain."""
        return BundleSet({**self.bundles, bundle.trust_domain: bundle})

    def get_bundle_for_trust_domain(self, trust_domain: TrustDomain) -> Bundle | None:
        return self.bundles.get(trust_domain)

    def __iter__(self) -> Iterator[Bundle]:
        return iter(self.bundles.values())

    def __len__(self) -> int:
        return len(self.bundles)
