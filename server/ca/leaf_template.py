"""X509-SVID leaves from a pre-encoded DER TBSCertificate: splice, sign the bytes, wrap.

Why: `cryptography`'s CertificateBuilder builds and encodes every ASN.1 object again for each
leaf and reaches about 0.2 of a raw ECDSA signature. All of an SVID's TBSCertificate but six
fields is the same for every leaf one CA issues under one profile (version, signature
algorithm, issuer, subject, BasicConstraints, KeyUsage, EKU, AuthorityKeyIdentifier), so it is
encoded once per CA here, and a leaf splices in only its serial, validity, SubjectPublicKeyInfo,
SAN (the SPIFFE ID URI and any DNS names) and SubjectKeyIdentifier. This is how CAs have long
issued at volume.

Why the DER is written by hand: `cryptography` (47) cannot template a TBSCertificate nor sign
TBS bytes into a certificate (its builder takes objects, and `cryptography.hazmat.asn1`
encodes whole structures from Python objects), and pyasn1/asn1crypto build full trees in
Python, slower than the builder. What is needed is small: definite-length TLVs (X.690 §8.1),
INTEGER, UTCTime/GeneralizedTime (RFC 5280 §4.1.2.5) and the Extension and GeneralName
framings. The constant extension values come from `cryptography` itself (`public_bytes()`).
The extensions keep CertificateBuilder's order, so both ways give the same TBS bytes
(`tests/unit/server/test_leaf_template.py` checks it).

Covered (`template_for` returns None otherwise, and `x509_leaf.build_leaf` falls back to
CertificateBuilder): CA keys EC with SHA-256 or SHA-384 (ecdsa-with-SHA256/384) and RSA with
SHA-256 (sha256WithRSAEncryption, PKCS#1 v1.5); leaf keys EC or RSA; the fixed leaf subject
O=SPIFFE. A custom subject also takes the builder.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache, partial

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from insignia.keys import PrivateKey

# The X509-SVID leaf profile's fixed values; the builder path (x509_leaf) uses the same ones.
LEAF_SUBJECT = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "SPIFFE")])
LEAF_EKU = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH])
LEAF_BC = x509.BasicConstraints(ca=False, path_length=None)


def _key_usage(*, key_encipherment: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=key_encipherment,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


KU_EC = _key_usage(key_encipherment=False)
KU_RSA = _key_usage(key_encipherment=True)  # RSA key exchange in TLS 1.2 needs it

_SEQUENCE = 0x30
_OCTET_STRING = 0x04
_BIT_STRING = 0x03
_INTEGER = 0x02
_OID = 0x06
_UTC_TIME = 0x17
_GENERALIZED_TIME = 0x18
_EXTENSIONS = 0xA3  # [3] EXPLICIT, constructed
_SAN_URI = 0x86  # GeneralName uniformResourceIdentifier [6] IMPLICIT IA5String
_SAN_DNS = 0x82  # GeneralName dNSName [2] IMPLICIT IA5String

_VERSION_V3 = bytes.fromhex("a003020102")  # [0] EXPLICIT INTEGER 2
_CRITICAL = bytes.fromhex("0101ff")  # BOOLEAN TRUE
# id-ce OIDs (2.5.29.x), each already a full OBJECT IDENTIFIER TLV.
_OID_SKI = bytes.fromhex("0603551d0e")
_OID_KU = bytes.fromhex("0603551d0f")
_OID_SAN = bytes.fromhex("0603551d11")
_OID_BC = bytes.fromhex("0603551d13")
_OID_AKI = bytes.fromhex("0603551d23")
_OID_EKU = bytes.fromhex("0603551d25")

#: AlgorithmIdentifier DER by (CA key is EC, hash name). RSA carries NULL parameters
#: (RFC 4055 §5); ECDSA carries none (RFC 5758 §3.2).
_SIGNATURE_ALGORITHMS: dict[tuple[bool, str], bytes] = {
    (True, "sha256"): bytes.fromhex("300a06082a8648ce3d040302"),
    (True, "sha384"): bytes.fromhex("300a06082a8648ce3d040303"),
    (False, "sha256"): bytes.fromhex("300d06092a864886f70d01010b0500"),
}
# Extension { extnID SKI, extnValue OCTET STRING { OCTET STRING (20 bytes) } } up to the ID.
_SKI_HEADER = bytes.fromhex("301d") + _OID_SKI + bytes.fromhex("04160414")
_MAX_SERIAL_BITS = 159  # RFC 5280 §4.1.2.2: at most 20 octets, positive


def der_length(n: int) -> bytes:
    """A definite length (X.690 §8.1.3): short form below 128, else 0x80|count and the bytes."""
    if n < 0x80:
        return bytes((n,))
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((0x80 | len(body),)) + body


def tlv(tag: int, body: bytes) -> bytes:
    """Tag, definite length, contents; the lengths a leaf has are written inline (hot path)."""
    n = len(body)
    if n < 0x80:
        return bytes((tag, n)) + body
    if n < 0x100:
        return bytes((tag, 0x81, n)) + body
    if n < 0x10000:
        return bytes((tag, 0x82, n >> 8, n & 0xFF)) + body
    return bytes((tag,)) + der_length(n) + body


def der_integer(n: int) -> bytes:
    """A non-negative INTEGER in its minimal two's-complement form (a 0x00 before a high bit)."""
    return tlv(_INTEGER, n.to_bytes(n.bit_length() // 8 + 1, "big"))


def der_time(moment: datetime) -> bytes:
    """UTCTime through 2049, GeneralizedTime from 2050 (RFC 5280 §4.1.2.5), whole seconds, Z."""
    t = moment.astimezone(UTC)
    hms = f"{t.month:02d}{t.day:02d}{t.hour:02d}{t.minute:02d}{t.second:02d}Z"
    if t.year < 2050:
        return tlv(_UTC_TIME, f"{t.year % 100:02d}{hms}".encode())
    return tlv(_GENERALIZED_TIME, f"{t.year:04d}{hms}".encode())


@lru_cache(maxsize=16)
def _validity(not_before: int, not_after: int) -> bytes:
    """Validity from Unix seconds. Leaves signed in one second (a batch shares its `now`)
    share it, so it is encoded once for them."""
    return tlv(
        _SEQUENCE,
        der_time(datetime.fromtimestamp(not_before, UTC))
        + der_time(datetime.fromtimestamp(not_after, UTC)),
    )


def _seconds(moment: datetime) -> int:
    """Whole Unix seconds, rounded down as the certificate drops the fraction."""
    return int(moment.timestamp() // 1)


def _read_header(data: bytes, offset: int) -> tuple[int, int]:
    """(start of contents, end of contents) of the TLV at `offset`."""
    first = data[offset + 1]
    if first < 0x80:
        return offset + 2, offset + 2 + first
    count = first & 0x7F
    start = offset + 2 + count
    return start, start + int.from_bytes(data[offset + 2 : start], "big")


def _ski_extension(spki_der: bytes) -> bytes:
    """The SubjectKeyIdentifier Extension: a fixed header and the 20-byte SHA-1 key ID."""
    return _SKI_HEADER + subject_key_identifier(spki_der)


def subject_key_identifier(spki_der: bytes) -> bytes:
    """SHA-1 of the subjectPublicKey BIT STRING's bits (RFC 5280 §4.2.1.2, method 1), as
    `x509.SubjectKeyIdentifier.from_public_key` derives it."""
    start, _ = _read_header(spki_der, 0)
    _, algorithm_end = _read_header(spki_der, start)
    bits_start, bits_end = _read_header(spki_der, algorithm_end)
    return hashlib.sha1(spki_der[bits_start + 1 : bits_end]).digest()  # noqa: S324 (an ID)


def _extension(oid: bytes, value: bytes, *, critical: bool = False) -> bytes:
    return tlv(_SEQUENCE, oid + (_CRITICAL if critical else b"") + tlv(_OCTET_STRING, value))


@dataclass(frozen=True, slots=True)
class LeafTemplate:
    """One CA's pre-encoded leaf TBSCertificate parts; `ec_head`/`rsa_head` are the two
    profiles (an RSA leaf's KeyUsage adds keyEncipherment)."""

    sign: Callable[[bytes], bytes]  # the CA key's sign with its algorithm bound, made once
    algorithm: bytes  # the signature AlgorithmIdentifier, in the TBS and in the certificate
    algorithm_and_issuer: bytes  # algorithm + issuer, between serial and validity
    subject: bytes
    ec_head: bytes  # BasicConstraints, KeyUsage, EKU
    rsa_head: bytes
    aki: bytes

    def certificate(
        self,
        serial: int,
        not_before: datetime,
        not_after: datetime,
        spki_der: bytes,
        rsa_leaf: bool,
        uri: str,
        dns_names: Sequence[str],
    ) -> bytes:
        """The signed leaf certificate's DER. Values are the caller's, already checked."""
        if serial <= 0 or serial.bit_length() > _MAX_SERIAL_BITS:
            raise ValueError(f"serial {serial}: expected a positive number of at most 159 bits")
        names = tlv(_SAN_URI, uri.encode("ascii")) + b"".join(
            tlv(_SAN_DNS, name.encode("ascii")) for name in dns_names
        )
        extensions = (
            (self.rsa_head if rsa_leaf else self.ec_head)
            + _extension(_OID_SAN, tlv(_SEQUENCE, names))
            + _ski_extension(spki_der)
            + self.aki
        )
        tbs = tlv(
            _SEQUENCE,
            _VERSION_V3
            + der_integer(serial)
            + self.algorithm_and_issuer
            + _validity(_seconds(not_before), _seconds(not_after))
            + self.subject
            + spki_der
            + tlv(_EXTENSIONS, tlv(_SEQUENCE, extensions)),
        )
        signature = self.sign(tbs)
        return tlv(_SEQUENCE, tbs + self.algorithm + tlv(_BIT_STRING, b"\x00" + signature))


def template_for(
    issuer: x509.Name,
    authority_key_identifier: x509.AuthorityKeyIdentifier,
    private_key: PrivateKey,
    signature_hash: hashes.SHA256 | hashes.SHA384,
) -> LeafTemplate | None:
    """The leaf template of a CA, or None for a CA key/hash it does not cover."""
    is_ec = isinstance(private_key, ec.EllipticCurvePrivateKey)
    algorithm = _SIGNATURE_ALGORITHMS.get((is_ec, signature_hash.name))
    if algorithm is None:
        return None
    sign: Callable[[bytes], bytes]
    if isinstance(private_key, ec.EllipticCurvePrivateKey):
        sign = partial(private_key.sign, signature_algorithm=ec.ECDSA(signature_hash))
    else:
        sign = partial(private_key.sign, padding=padding.PKCS1v15(), algorithm=signature_hash)
    bc = _extension(_OID_BC, LEAF_BC.public_bytes(), critical=True)
    eku = _extension(_OID_EKU, LEAF_EKU.public_bytes())
    return LeafTemplate(
        sign=sign,
        algorithm=algorithm,
        algorithm_and_issuer=algorithm + issuer.public_bytes(),
        subject=LEAF_SUBJECT.public_bytes(),
        ec_head=bc + _extension(_OID_KU, KU_EC.public_bytes(), critical=True) + eku,
        rsa_head=bc + _extension(_OID_KU, KU_RSA.public_bytes(), critical=True) + eku,
        aki=_extension(_OID_AKI, authority_key_identifier.public_bytes()),
    )
