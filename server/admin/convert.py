"""Admin API messages <-> server domain values. Validation happens here, at the boundary."""

from __future__ import annotations

from datetime import datetime

from insignia_proto import admin_pb2

from insignia.server.ca.rotation import AuthorityRecord
from insignia.server.datastore.records import AgentRecord
from insignia.server.entries import (
    EntryLimits,
    RegistrationEntry,
    expires_at_from_unix,
    validate_entry,
)


def _ts(value: datetime | None) -> int:
    return int(value.timestamp()) if value is not None else 0


def entry_to_proto(entry: RegistrationEntry) -> admin_pb2.Entry:
    return admin_pb2.Entry(
        id=entry.id,
        spiffe_id=str(entry.spiffe_id),
        parent_id=str(entry.parent_id),
        selectors=[str(s) for s in entry.selectors],
        x509_svid_ttl=entry.x509_svid_ttl,
        jwt_svid_ttl=entry.jwt_svid_ttl,
        wit_svid_ttl=entry.wit_svid_ttl,
        dns_names=list(entry.dns_names),
        federates_with=[str(td) for td in entry.federates_with],
        hint=entry.hint,
        admin=entry.admin,
        downstream=entry.downstream,
        expires_at=_ts(entry.expires_at),
        revision=entry.revision,
        created_at=_ts(entry.created_at),
    )


def entry_from_proto(
    message: admin_pb2.Entry, limits: EntryLimits, *, keep_id: bool
) -> RegistrationEntry:
    """Validate an entry from the wire (raises `InvalidEntry` naming the field)."""
    return validate_entry(
        spiffe_id=message.spiffe_id,
        parent_id=message.parent_id,
        selectors=list(message.selectors),
        limits=limits,
        x509_svid_ttl=message.x509_svid_ttl,
        jwt_svid_ttl=message.jwt_svid_ttl,
        wit_svid_ttl=message.wit_svid_ttl,
        dns_names=list(message.dns_names),
        federates_with=list(message.federates_with),
        hint=message.hint,
        admin=message.admin,
        downstream=message.downstream,
        expires_at=expires_at_from_unix(message.expires_at),
        entry_id=(message.id or None) if keep_id else None,
    )


def agent_to_proto(agent: AgentRecord) -> admin_pb2.Agent:
    return admin_pb2.Agent(
        id=str(agent.spiffe_id),
        attestor=agent.attestation_type,
        selectors=[str(s) for s in agent.selectors],
        serial=format(int(agent.serial_number), "x") if agent.serial_number.isdigit() else "",
        expires_at=_ts(agent.expires_at),
        banned=agent.banned,
        attested_at=_ts(agent.created_at),
        reattestable=agent.can_reattest,
    )


def authority_to_proto(
    record: AuthorityRecord, upstream_id: str = "", server_id: str = ""
) -> admin_pb2.Authority:
    return admin_pb2.Authority(
        authority_id=record.authority_id,
        state=record.state.value,
        not_before=_ts(record.not_before),
        not_after=_ts(record.not_after),
        tainted=record.tainted,
        upstream_authority_id=upstream_id,
        server_id=server_id,
    )
