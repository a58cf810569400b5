"""The SPIFFE ID paths Insignia keeps for itself: the server's ID and its agents' IDs.

Everything under `/insignia/` belongs to the server or an agent, so no registration entry and
no minted SVID may name it. Node attestors build agent IDs with `agent_spiffe_id` and the server
recognises them with `is_agent_id`: one layout, imported by both sides (SPIRE's is
`/spire/agent/<plugin>/...`).
"""

from __future__ import annotations

from typing import Final

from insignia.spiffeid import SpiffeId, TrustDomain

RESERVED_PREFIX: Final = "/insignia/"
SERVER_PATH: Final = "/insignia/server"
AGENT_PREFIX: Final = "/insignia/agent/"
_AGENT_SEGMENTS: Final = tuple(AGENT_PREFIX.strip("/").split("/"))
RESERVED_REASON: Final = f"paths under {RESERVED_PREFIX} belong to the server and its agents"


def agent_spiffe_id(trust_domain: TrustDomain, plugin: str, *segments: str) -> SpiffeId:
    """The ID of an agent attested by `plugin`: `/insignia/agent/<plugin>/<segments...>`."""
    return SpiffeId.from_segments(trust_domain, *_AGENT_SEGMENTS, plugin, *segments)


def is_agent_id(spiffe_id: SpiffeId) -> bool:
    return spiffe_id.path.startswith(AGENT_PREFIX)


def is_reserved(spiffe_id: SpiffeId) -> bool:
    """Whether `spiffe_id` is the server's or an agent's (or anywhere else under /insignia/)."""
    return spiffe_id.path.startswith(RESERVED_PREFIX)
