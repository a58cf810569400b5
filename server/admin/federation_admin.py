"""The admin API's federation calls: relationships (`federation ...`) and federated bundles
(`bundle set|list|delete`). Each takes the core and the request and returns the answer;
`AdminApi` authorizes, audits and maps the exceptions to status codes.
"""

from __future__ import annotations

from insignia_proto import admin_pb2

from insignia.bundle import Bundle
from insignia.server.core import ServerCore
from insignia.server.datastore.errors import BundleNotFound
from insignia.server.datastore.federation_queries import BundleDeleteMode
from insignia.server.datastore.records import FederationRecord
from insignia.server.federation.acceptance import refresh_interval
from insignia.server.federation.refresher import RefreshError, held_bundle, refresh_recorded
from insignia.server.federation.relationship import (
    BUNDLE_FORMATS,
    Relationship,
    parse_bundle,
    requested_relationship,
)
from insignia.server.federation.stored import relationship_record, stored_relationship
from insignia.spiffeid import TrustDomain

DELETE_MODES: tuple[BundleDeleteMode, ...] = ("restrict", "delete", "dissociate")


class DeclaredInConfig(Exception):
    """A change the config file would undo at the next restart: refused."""

    def __init__(self, trust_domain: TrustDomain, what: str) -> None:
        super().__init__(
            f"{trust_domain} is declared in the config file ([[federation.federates_with]]): "
            f"{what}; edit the config file and restart"
        )


class RefreshFailed(Exception):
    def __init__(self, trust_domain: TrustDomain, cause: Exception) -> None:
        super().__init__(f"refresh of {trust_domain} failed: {cause}")


def _ts(record: FederationRecord | None, which: str) -> int:
    return int(getattr(record, which).timestamp()) if record is not None else 0


def relationship_to_proto(
    relationship: Relationship, record: FederationRecord | None = None
) -> admin_pb2.FederationRelationship:
    bootstrap = relationship.bootstrap
    return admin_pb2.FederationRelationship(
        trust_domain=str(relationship.trust_domain),
        bundle_endpoint_url=relationship.url,
        profile=relationship.profile,
        endpoint_spiffe_id=str(relationship.endpoint_id or ""),
        trust_domain_bundle=bootstrap.to_spiffe() if bootstrap is not None else b"",
        trust_domain_bundle_format="spiffe" if bootstrap is not None else "",
        from_config=relationship.from_config,
        created_at=_ts(record, "created_at"),
        updated_at=_ts(record, "updated_at"),
    )


def _requested(core: ServerCore, m: admin_pb2.FederationRelationship) -> Relationship:
    return requested_relationship(
        core.trust_domain,
        m.trust_domain,
        m.bundle_endpoint_url,
        m.profile or "https_spiffe",
        m.endpoint_spiffe_id,
        m.trust_domain_bundle,
        m.trust_domain_bundle_format or "spiffe",
    )


async def _check_anchors(core: ServerCore, relationship: Relationship) -> None:
    """https_spiffe cannot authenticate its endpoint without a bundle of the endpoint's trust
    domain: refuse a relationship that could never fetch, rather than store it."""
    if relationship.profile != "https_spiffe" or relationship.bootstrap is not None:
        return
    anchor = relationship.anchor_trust_domain
    if await core.blocking(held_bundle, core, anchor) is None:
        raise ValueError(
            f"https_spiffe needs the bundle of {anchor} to authenticate the endpoint: give a "
            "trust domain bundle (--trust-domain-bundle) or store one first (bundle set)"
        )


async def create_relationship(
    core: ServerCore, m: admin_pb2.FederationRelationship
) -> admin_pb2.FederationRelationship:
    relationship = _requested(core, m)
    if relationship.trust_domain in core.configured_federation:
        raise DeclaredInConfig(relationship.trust_domain, "it exists already")
    await _check_anchors(core, relationship)
    record = await core.blocking(core.store.create_federation, relationship_record(relationship))
    return relationship_to_proto(relationship, record)


async def update_relationship(
    core: ServerCore, m: admin_pb2.FederationRelationship
) -> admin_pb2.FederationRelationship:
    relationship = _requested(core, m)
    if relationship.trust_domain in core.configured_federation:
        raise DeclaredInConfig(relationship.trust_domain, "not updated")
    await _check_anchors(core, relationship)
    record = await core.blocking(core.store.update_federation, relationship_record(relationship))
    return relationship_to_proto(relationship, record)


async def delete_relationship(
    core: ServerCore, m: admin_pb2.FederationRelationshipRequest
) -> admin_pb2.FederationRelationship:
    td = TrustDomain.parse(m.trust_domain)
    if td in core.configured_federation:
        raise DeclaredInConfig(td, "not deleted")
    record = await core.blocking(core.store.delete_federation, td)
    return relationship_to_proto(stored_relationship(record), record)


async def _in_force(
    core: ServerCore, td: TrustDomain
) -> tuple[Relationship, FederationRecord | None]:
    """The relationship acted on for `td`: the config file's, else the datastore's (read
    afresh, not from the follower's copy, so a call right after `create` finds it)."""
    configured = core.configured_federation.get(td)
    if configured is not None:
        return configured, None
    record = await core.blocking(core.store.get_federation, td)
    return stored_relationship(record), record


async def get_relationship(
    core: ServerCore, m: admin_pb2.FederationRelationshipRequest
) -> admin_pb2.FederationRelationship:
    relationship, record = await _in_force(core, TrustDomain.parse(m.trust_domain))
    return relationship_to_proto(relationship, record)


async def list_relationships(core: ServerCore) -> admin_pb2.ListFederationRelationshipsResponse:
    records = {r.trust_domain: r for r in await core.blocking(core.store.list_federations)}
    found = {td: relationship_to_proto(stored_relationship(r), r) for td, r in records.items()}
    found.update((td, relationship_to_proto(r)) for td, r in core.configured_federation.items())
    return admin_pb2.ListFederationRelationshipsResponse(
        relationships=[found[td] for td in sorted(found, key=str)]
    )


async def refresh_relationship(
    core: ServerCore, m: admin_pb2.FederationRelationshipRequest
) -> admin_pb2.RefreshFederationRelationshipResponse:
    td = TrustDomain.parse(m.trust_domain)
    relationship, _record = await _in_force(core, td)
    try:
        refreshed = await core.in_trio(refresh_recorded, core, relationship)
    except RefreshError as exc:
        raise RefreshFailed(td, exc) from exc
    bundle = refreshed.bundle
    return admin_pb2.RefreshFederationRelationshipResponse(
        trust_domain=str(td),
        changed=refreshed.changed,
        sequence=bundle.sequence,
        x509_authorities=len(bundle.x509_authorities),
        jwt_authorities=len(bundle.jwt_authorities),
        next_refresh_seconds=int(refresh_interval(bundle).total_seconds()),
    )


# --- federated bundles ------------------------------------------------------------------------


def _foreign(core: ServerCore, text: str) -> TrustDomain:
    td = TrustDomain.parse(text)
    if td == core.trust_domain:
        raise ValueError(
            f"{td} is this server's own trust domain: its bundle is the CA's (bundle show)"
        )
    return td


def bundle_to_proto(bundle: Bundle, document: str) -> admin_pb2.Bundle:
    return admin_pb2.Bundle(
        trust_domain=str(bundle.trust_domain),
        spiffe_bundle=document.encode(),
        x509_pem=bundle.x509_pem(),
    )


async def set_bundle(core: ServerCore, m: admin_pb2.SetFederatedBundleRequest) -> admin_pb2.Bundle:
    td = _foreign(core, m.trust_domain)
    fmt = m.format or "spiffe"
    if fmt not in BUNDLE_FORMATS:
        raise ValueError(f"bundle format {fmt!r}: expected spiffe or pem")
    bundle = parse_bundle(td, m.data, fmt, "bundle")
    document = bundle.to_spiffe().decode()
    await core.blocking(core.store.put_bundle, td, document)
    return bundle_to_proto(bundle, document)


async def list_bundles(
    core: ServerCore, m: admin_pb2.ListFederatedBundlesRequest
) -> admin_pb2.ListFederatedBundlesResponse:
    wanted = _foreign(core, m.trust_domain) if m.trust_domain else None
    records = await core.blocking(core.store.list_bundles)
    chosen = [
        r
        for r in records
        if r.trust_domain != core.trust_domain and wanted in (None, r.trust_domain)
    ]
    if wanted is not None and not chosen:
        raise BundleNotFound(str(wanted))
    return admin_pb2.ListFederatedBundlesResponse(
        bundles=[
            bundle_to_proto(Bundle.parse_spiffe(r.trust_domain, r.document), r.document)
            for r in chosen
        ]
    )


async def delete_bundle(
    core: ServerCore, m: admin_pb2.DeleteFederatedBundleRequest
) -> admin_pb2.DeleteFederatedBundleResponse:
    td = _foreign(core, m.trust_domain)
    mode = m.mode or "restrict"
    if mode not in DELETE_MODES:
        raise ValueError(f"mode {mode!r}: expected restrict, delete or dissociate")
    if td in core.configured_federation:
        raise DeclaredInConfig(td, "its relationship keeps the bundle")
    ids = await core.blocking(core.store.delete_federated_bundle, td, mode)
    return admin_pb2.DeleteFederatedBundleResponse(trust_domain=str(td), entry_ids=ids)
