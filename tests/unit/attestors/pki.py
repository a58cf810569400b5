"""Node PKIs for x509pop tests: CAs from insignia.server.ca.x509ca, node certificates built here."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from insignia.keys import KeyType, generate_key
from insignia.server.ca.x509ca import SigningAuthority, build_intermediate_ca
from insignia.spiffeid import TrustDomain
from tests.unit.common import WALL_NOW, make_ca

NODE_TD = TrustDomain("nodes.example")

NodeKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def root_ca() -> SigningAuthority:
    return make_ca(NODE_TD, WALL_NOW, timedelta(days=30))


def intermediate_ca(parent: SigningAuthority) -> SigningAuthority:
    key = generate_key(KeyType.EC_P256)
    cert = build_intermediate_ca(
        parent, key.public_key(), NODE_TD, timedelta(days=20), now=WALL_NOW
    )
    return SigningAuthority(cert, key, (cert, *parent.chain))


def node_cert(
    issuer: SigningAuthority,
    key: NodeKey,
    cn: str = "node-1",
    dns: tuple[str, ...] = ("node-1.example",),
    key_usage: x509.KeyUsage | None = None,
    ca: bool = False,
    not_after: datetime | None = None,
    serial: int = 0x0A1B2C,
) -> x509.Certificate:
    usage = key_usage or x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(issuer.certificate.subject)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(WALL_NOW - timedelta(minutes=1))
        .not_valid_after(not_after or WALL_NOW + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(usage, critical=True)
    )
    if dns:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(d) for d in dns]), critical=False
        )
    return builder.sign(issuer.private_key, hashes.SHA256())


def pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def key_pem(key: NodeKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


def write_node_files(directory: Path, key: NodeKey, *chain: x509.Certificate) -> tuple[Path, Path]:
    """(key path, certificate path) as an operator would provision them."""
    key_path, cert_path = directory / "node.key", directory / "node.pem"
    key_path.write_bytes(key_pem(key))
    cert_path.write_bytes(pem(*chain))
    return key_path, cert_path
