"""A federation relationship: a peer trust domain, where its bundle endpoint is and how that
endpoint proves itself (SPIFFE Federation §5: https_web by Web PKI, https_spiffe by an
X509-SVID of `endpoint_id` chaining to the peer's bundle, bootstrapped by a configured one).
An https_web relationship may name its own roots (`web_ca_file`) instead of the system's.

Pure: the config, the admin API and the refresher all build and check relationships here.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, cast
from urllib.parse import urlsplit

from cryptography import x509

from insignia.bundle import Bundle, InvalidBundle
from insignia.daemon.config.loading import StartupRefused
from insignia.server.federation.acceptance import MAX_BUNDLE_BYTES, foreign_authority
from insignia.spiffeid import InvalidSpiffeId, SpiffeId, TrustDomain

if TYPE_CHECKING:  # the config imports this module's checks
    from insignia.server.config import FederationRelationshipConfig

Profile = Literal["https_spiffe", "https_web"]
PROFILES: tuple[Profile, ...] = ("https_spiffe", "https_web")


@dataclass(frozen=True)
class Relationship:
    trust_domain: TrustDomain
    url: str
    profile: Profile
    endpoint_id: SpiffeId | None = None  # https_spiffe only
    bootstrap: Bundle | None = None  # https_spiffe: trusted until the first fetch succeeds
    from_config: bool = False  # declared in the config file: the config wins on restart
    web_ca_file: Path | None = None  # https_web: the roots to trust instead of the system's

    @property
    def anchor_trust_domain(self) -> TrustDomain:
        """Whose bundle authenticates the endpoint (https_spiffe): the endpoint ID's domain,
        usually the peer itself."""
        return self.endpoint_id.trust_domain if self.endpoint_id is not None else self.trust_domain

    @property
    def host_port(self) -> tuple[str, int]:
        parts = urlsplit(self.url)
        assert parts.hostname is not None  # check_relationship refused a URL without one
        return parts.hostname, parts.port or 443

    @property
    def target(self) -> str:
        """The request target: the URL's path and query ("/" when empty)."""
        parts = urlsplit(self.url)
        return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


def check_relationship(
    trust_domain: str, url: str, profile: str, endpoint_spiffe_id: str
) -> tuple[TrustDomain, SpiffeId | None]:
    """The parsed trust domain and endpoint ID, or ValueError naming the bad field."""
    td = TrustDomain.parse(trust_domain)
    if profile not in PROFILES:
        raise ValueError(f"profile {profile!r}: expected https_spiffe or https_web")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  # raises ValueError on a bad port
    except ValueError as exc:
        raise ValueError(f"bundle endpoint URL {url!r}: {exc}") from None
    if parts.scheme != "https" or not parts.hostname:
        raise ValueError(f"bundle endpoint URL {url!r}: expected https://host[:port]/path")
    if parts.username or parts.password or parts.fragment:
        raise ValueError(f"bundle endpoint URL {url!r}: no user info or fragment allowed")
    if profile == "https_web":
        if endpoint_spiffe_id:
            raise ValueError("endpoint SPIFFE ID is for https_spiffe only")
        return td, None
    if not endpoint_spiffe_id:
        raise ValueError("https_spiffe needs the endpoint's SPIFFE ID (endpoint_spiffe_id)")
    try:
        return td, SpiffeId.parse(endpoint_spiffe_id)
    except InvalidSpiffeId as exc:
        raise ValueError(f"endpoint SPIFFE ID: {exc}") from None


def load_bootstrap(trust_domain: TrustDomain, path: Path, fmt: str) -> Bundle:
    """A bootstrap bundle file (SPIFFE JSON or PEM); ValueError naming the file and cause."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"{path}: {exc.strerror}") from None
    return parse_bundle(trust_domain, data, fmt, str(path))


def parse_bundle(trust_domain: TrustDomain, data: bytes, fmt: str, where: str) -> Bundle:
    """A bundle in `fmt` ("spiffe" or "pem") with at least one key; ValueError otherwise."""
    if len(data) > MAX_BUNDLE_BYTES:
        raise ValueError(f"{where}: over {MAX_BUNDLE_BYTES} bytes")
    try:
        bundle = (
            Bundle.parse_pem(trust_domain, data)
            if fmt == "pem"
            else Bundle.parse_spiffe(trust_domain, data)
        )
    except InvalidBundle as exc:
        raise ValueError(f"{where}: {exc.reason}") from None
    if not bundle.x509_authorities and not bundle.jwt_authorities:
        raise ValueError(f"{where}: the bundle has no keys")
    named = foreign_authority(bundle)
    if named is not None:
        raise ValueError(
            f"{where}: an X.509 authority is for trust domain {named}, not {trust_domain}"
        )
    return bundle


def check_web_ca_file(path: Path) -> None:
    """A readable PEM file of at least one certificate; ValueError naming the cause."""
    try:
        certificates = x509.load_pem_x509_certificates(path.read_bytes())
    except OSError as exc:
        raise ValueError(f"{path}: {exc.strerror}") from None
    except ValueError:
        certificates = []
    if not certificates:
        raise ValueError(f"{path}: no PEM certificate")


def configured_relationships(configs: Sequence[FederationRelationshipConfig]) -> list[Relationship]:
    """The config file's relationships, bootstrap bundles read; StartupRefused naming the
    key of a bundle file that cannot be used."""
    relationships = []
    for i, config in enumerate(configs):
        td, endpoint_id = check_relationship(
            config.trust_domain,
            config.bundle_endpoint_url,
            config.profile,
            config.endpoint_spiffe_id,
        )
        bootstrap = None
        if config.trust_domain_bundle is not None:
            bundle_td = endpoint_id.trust_domain if endpoint_id is not None else td
            try:
                bootstrap = load_bootstrap(
                    bundle_td, config.trust_domain_bundle, config.trust_domain_bundle_format
                )
            except ValueError as exc:
                raise StartupRefused(
                    f"federation.federates_with.{i}.trust_domain_bundle", str(exc)
                ) from exc
        if config.web_ca_file is not None:
            try:
                check_web_ca_file(config.web_ca_file)
            except ValueError as exc:
                raise StartupRefused(
                    f"federation.federates_with.{i}.web_ca_file", str(exc)
                ) from exc
        relationships.append(
            Relationship(
                td,
                config.bundle_endpoint_url,
                config.profile,
                endpoint_id,
                bootstrap,
                True,
                config.web_ca_file,
            )
        )
    return relationships


BUNDLE_FORMATS = ("spiffe", "pem")


def requested_relationship(
    own: TrustDomain,
    trust_domain: str,
    url: str,
    profile: str,
    endpoint_spiffe_id: str,
    bundle: bytes,
    bundle_format: str,
) -> Relationship:
    """A relationship as the admin API receives it, every field checked: ValueError of one
    line naming the first bad one."""
    td, endpoint_id = check_relationship(trust_domain, url, profile, endpoint_spiffe_id)
    if td == own:
        raise ValueError(f"trust domain {td} is this server's own: federate with another one")
    relationship = Relationship(td, url, cast(Profile, profile), endpoint_id)
    if not bundle:
        return relationship
    if profile != "https_spiffe":
        raise ValueError("a trust domain bundle bootstraps https_spiffe only")
    if bundle_format not in BUNDLE_FORMATS:
        raise ValueError(f"trust domain bundle format {bundle_format!r}: expected spiffe or pem")
    anchor = relationship.anchor_trust_domain
    if anchor == own:
        raise ValueError(
            f"trust domain bundle: the endpoint is in {own}, this server's own trust domain, "
            "whose bundle the server has already"
        )
    bootstrap = parse_bundle(anchor, bundle, bundle_format, "trust domain bundle")
    return Relationship(td, url, relationship.profile, endpoint_id, bootstrap)


def relationships_in_force(
    configured: Iterable[Relationship], stored: Iterable[Relationship]
) -> dict[TrustDomain, Relationship]:
    """The relationships this server acts on: the datastore's, with the config file's in
    place of any of the same trust domain (the config wins)."""
    result = {r.trust_domain: r for r in stored}
    result.update((r.trust_domain, r) for r in configured)
    return result
