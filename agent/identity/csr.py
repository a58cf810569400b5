"""Certificate signing requests the agent sends: the key stays here, only the CSR travels."""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from insignia.keys import PrivateKey, x509_signature_hash
from insignia.spiffeid import SpiffeId


def build_csr(key: PrivateKey, spiffe_id: SpiffeId | None) -> bytes:
    """A DER PKCS#10 request signed by `key`, with `spiffe_id` as its only URI SAN if given.

    The agent SVID's CSR has no SAN: the server decides the agent's ID from the attestation.
    """
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    if spiffe_id is not None:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(str(spiffe_id))]),
            critical=False,
        )
    csr = builder.sign(key, x509_signature_hash(key))
    return csr.public_bytes(serialization.Encoding.DER)
