"""Relationships as the datastore keeps them (`federation_relationships`), and back. Apart
from `relationship.py` so that the config, which the CLI loads, does not import the datastore.
"""

from __future__ import annotations

from typing import cast

from insignia.bundle import Bundle
from insignia.server.datastore.records import FederationRecord
from insignia.server.federation.relationship import Profile, Relationship, check_relationship


def relationship_record(relationship: Relationship) -> FederationRecord:
    bootstrap = relationship.bootstrap
    return FederationRecord(
        relationship.trust_domain,
        relationship.url,
        relationship.profile,
        str(relationship.endpoint_id or ""),
        bootstrap.to_spiffe().decode() if bootstrap is not None else "",
    )


def stored_relationship(record: FederationRecord) -> Relationship:
    """A relationship from its datastore row (checked when it was written)."""
    td, endpoint_id = check_relationship(
        str(record.trust_domain),
        record.bundle_endpoint_url,
        record.profile,
        record.endpoint_spiffe_id,
    )
    relationship = Relationship(
        td, record.bundle_endpoint_url, cast(Profile, record.profile), endpoint_id
    )
    if not record.bootstrap_bundle:
        return relationship
    bootstrap = Bundle.parse_spiffe(relationship.anchor_trust_domain, record.bootstrap_bundle)
    return Relationship(td, relationship.url, relationship.profile, endpoint_id, bootstrap)
