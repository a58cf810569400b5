"""`authority x509|jwt|wit show|prepare|activate|taint|revoke` on the server side."""

from __future__ import annotations

from typing import Literal

from insignia_proto import admin_pb2

from insignia.server.admin.convert import authority_to_proto
from insignia.server.ca.rotation import AuthorityError
from insignia.server.core import ServerCore
from insignia.server.datastore.records import AuthorityKind

Action = Literal["prepare", "activate", "taint", "revoke"]


def _kind(value: int) -> AuthorityKind:
    if value == admin_pb2.X509:
        return "x509"
    if value == admin_pb2.JWT:
        return "jwt"
    if value == admin_pb2.WIT:
        return "wit"
    raise ValueError("authority kind: expected X509, JWT or WIT")


def _upstream(core: ServerCore, kind: AuthorityKind) -> str:
    return core.settings_upstream_id if kind == "x509" else ""


async def list_authorities(
    core: ServerCore, request: admin_pb2.AuthorityRequest
) -> admin_pb2.ListAuthoritiesResponse:
    """Every server's authorities, each with its owner, so that an operator can taint or
    revoke another server's key from this listing (as the journal allows, from any server)."""
    kind = _kind(request.kind)
    authorities = core.authorities
    return admin_pb2.ListAuthoritiesResponse(
        authorities=[
            authority_to_proto(r, _upstream(core, kind), owner)
            for owner, r in authorities.by_server(kind)
        ],
        server_id=authorities.server_id,
    )


async def authority_action(
    core: ServerCore, action: Action, request: admin_pb2.AuthorityRequest
) -> admin_pb2.Authority:
    """Run one manual transition through the same lock and checks as scheduled rotation."""
    kind = _kind(request.kind)
    authorities = core.authorities
    authority_id = request.authority_id
    if action in ("taint", "revoke") and not authority_id:
        raise AuthorityError("", f"{action} needs the authority id (see `authority {kind} show`)")
    owners = {r.authority_id: owner for owner, r in authorities.by_server(kind)}  # before: revoke
    if action == "prepare":
        record = await core.in_trio(core.ca_operation, authorities.prepare, kind)
    elif action == "activate":
        record = await core.in_trio(core.ca_operation, authorities.activate, kind, authority_id)
    elif action == "taint":
        record = await core.in_trio(core.ca_operation, authorities.taint, kind, authority_id)
    else:
        record = await core.in_trio(core.ca_operation, authorities.revoke, kind, authority_id)
    owner = owners.get(record.authority_id, authorities.server_id)  # a prepared key is ours
    return authority_to_proto(record, _upstream(core, kind), owner)
