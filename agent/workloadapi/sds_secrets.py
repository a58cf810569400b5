"""Envoy SDS secrets for one workload, named as SPIRE's agent names them.

Pure: built from the very message the Workload API serves the caller (its SVIDs and keys,
`views.x509_view`) and its bundle map (`views.x509_bundles`), so SDS never holds a second
copy of a key. The names a client may ask for:

- a SPIFFE ID of one of the caller's SVIDs: a `tls_certificate` (chain and key);
- `default_svid_name`: the caller's first SVID;
- `default_bundle_name`: a `validation_context` with our trust domain's CAs;
- a trust domain's SPIFFE ID (ours or a federated one): that domain's CAs;
- `default_all_bundles_name`: every trust domain the caller trusts, as the configuration of
  Envoy's SPIFFE certificate validator (or, with that validation disabled, all CAs at once).

No names asks for everything (SPIRE's wildcard): every bundle and every SVID by its ID.
A name the caller is not entitled to is left out, and reported, never an error.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from cryptography.hazmat.primitives.serialization import Encoding
from envoy.config.core.v3 import base_pb2, extension_pb2
from envoy.extensions.transport_sockets.tls.v3 import (
    common_pb2,
    secret_pb2,
    tls_spiffe_validator_config_pb2,
)
from google.protobuf import any_pb2
from insignia_proto import workload_pb2 as pb

from insignia.agent.workloadapi.sds_service import SdsNames
from insignia.x509svid import parse_chain_der

SECRET_TYPE_URL = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"  # noqa: S105

# Envoy 1.40 knows the SPIFFE validator only by this name: the longer
# `envoy.transport_sockets.tls.cert_validator.spiffe` makes every handshake fail.
SPIFFE_VALIDATOR = "envoy.tls.cert_validator.spiffe"


@dataclass(frozen=True, slots=True)
class Resolved:
    """The secrets found for a request, in request order, and the names that matched none."""

    secrets: tuple[secret_pb2.Secret, ...]
    unknown: tuple[str, ...]


def _pem(label: str, der: bytes) -> bytes:
    body = base64.b64encode(der)
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    begin, end = f"-----BEGIN {label}-----\n".encode(), f"-----END {label}-----\n".encode()
    return b"".join([begin, *(line + b"\n" for line in lines), end])


def _certificates_pem(concatenated_der: bytes) -> bytes:
    return b"".join(c.public_bytes(Encoding.PEM) for c in parse_chain_der(concatenated_der))


def _inline(data: bytes) -> base_pb2.DataSource:
    return base_pb2.DataSource(inline_bytes=data)


def tls_certificate(name: str, svid: pb.X509SVID) -> secret_pb2.Secret:
    return secret_pb2.Secret(
        name=name,
        tls_certificate=common_pb2.TlsCertificate(
            certificate_chain=_inline(_certificates_pem(svid.x509_svid)),
            private_key=_inline(_pem("PRIVATE KEY", svid.x509_svid_key)),
        ),
    )


def trusted_ca(name: str, bundles_der: Sequence[bytes]) -> secret_pb2.Secret:
    pem = b"".join(_certificates_pem(der) for der in bundles_der)
    return secret_pb2.Secret(
        name=name,
        validation_context=common_pb2.CertificateValidationContext(trusted_ca=_inline(pem)),
    )


def spiffe_validator(name: str, bundles: Mapping[str, bytes]) -> secret_pb2.Secret:
    """Envoy's SPIFFE validator trusting each domain in `bundles` (trust domain ID -> DER)."""
    config = tls_spiffe_validator_config_pb2.SPIFFECertValidatorConfig(
        trust_domains=[
            tls_spiffe_validator_config_pb2.SPIFFECertValidatorConfig.TrustDomain(
                name=td_id.removeprefix("spiffe://"), trust_bundle=_inline(_certificates_pem(der))
            )
            for td_id, der in sorted(bundles.items())
        ]
    )
    typed = any_pb2.Any()
    typed.Pack(config)
    return secret_pb2.Secret(
        name=name,
        validation_context=common_pb2.CertificateValidationContext(
            custom_validator_config=extension_pb2.TypedExtensionConfig(
                name=SPIFFE_VALIDATOR, typed_config=typed
            )
        ),
    )


def resolve(
    requested: Sequence[str],
    svids: pb.X509SVIDResponse,
    bundles: Mapping[str, bytes],
    local_td_id: str,
    names: SdsNames,
) -> Resolved:
    """The secrets `requested` names (none: all of them) for a caller holding `svids` and
    trusting `bundles` (trust domain ID -> concatenated DER, ours as `local_td_id`)."""
    by_id: dict[str, pb.X509SVID] = {}
    for svid in svids.svids:
        by_id.setdefault(svid.spiffe_id, svid)
    wanted = list(dict.fromkeys(n for n in requested if n)) or [*bundles, *by_id]
    found: list[secret_pb2.Secret] = []
    unknown: list[str] = []
    for name in wanted:
        secret = _one(name, by_id, svids, bundles, local_td_id, names)
        if secret is None:
            unknown.append(name)
        else:
            found.append(secret)
    return Resolved(tuple(found), tuple(unknown))


def _one(
    name: str,
    by_id: Mapping[str, pb.X509SVID],
    svids: pb.X509SVIDResponse,
    bundles: Mapping[str, bytes],
    local_td_id: str,
    names: SdsNames,
) -> secret_pb2.Secret | None:
    if name in by_id:
        return tls_certificate(name, by_id[name])
    if name in bundles:
        return trusted_ca(name, [bundles[name]])
    if name == names.default_svid_name and svids.svids:
        return tls_certificate(name, svids.svids[0])
    if name == names.default_bundle_name and local_td_id in bundles:
        return trusted_ca(name, [bundles[local_td_id]])
    if name == names.default_all_bundles_name and bundles:
        if names.disable_spiffe_cert_validation:
            return trusted_ca(name, list(bundles.values()))
        return spiffe_validator(name, bundles)
    return None
