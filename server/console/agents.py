"""The agents list: filter and sort attested agents (pure, over the in-memory records)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from insignia.server.datastore.records import AgentRecord

SORTS: dict[str, Callable[[AgentRecord], Any]] = {
    "id": lambda a: str(a.spiffe_id),
    "attestor": lambda a: (a.attestation_type, str(a.spiffe_id)),
    "serial": lambda a: int(a.serial_number) if a.serial_number.isdigit() else -1,
    "expires": lambda a: a.expires_at,
    "seen": lambda a: a.updated_at,
    "banned": lambda a: (a.banned, str(a.spiffe_id)),
}


def select_agents(
    agents: Iterable[AgentRecord],
    *,
    text: str = "",
    attestor: str = "",
    banned: str = "",
    sort: str = "id",
    descending: bool = False,
) -> list[AgentRecord]:
    """Agents whose ID or a node selector contains `text`, of `attestor` ("" = any), banned
    or not ("yes", "no", "" = both), sorted by `sort` (a key of SORTS; unknown = by ID)."""
    needle = text.strip().lower()

    def wanted(agent: AgentRecord) -> bool:
        if attestor and agent.attestation_type != attestor:
            return False
        if banned and agent.banned != (banned == "yes"):
            return False
        haystack = [str(agent.spiffe_id), *(str(s) for s in agent.selectors)]
        return not needle or any(needle in h.lower() for h in haystack)

    return sorted(filter(wanted, agents), key=SORTS.get(sort, SORTS["id"]), reverse=descending)
