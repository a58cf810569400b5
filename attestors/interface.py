"""The contract between Insignia and its attestor plugins, built-in or third-party.

A workload attestor turns a caller the kernel vouched for into selectors. It gets the caller
as the Workload API's front read it at accept (`PeerCredentials`: pid and effective uid/gid
from SO_PEERCRED, and a `PidFd` that pins the process, so `caller.pidfd.is_alive()` after a
read of /proc proves the read described the process that connected, not a pid successor).

A node attestor is split in two: the agent side produces evidence and answers challenges; the
server side is a small state machine (`begin` -> `answer`* -> result) that the agent API drives
over a bidirectional stream of opaque bytes, so a plugin can ask any number of challenges
without the transport knowing what they mean.

Plugins are found through entry points (see `insignia.attestors.registry`); each entry point names a
`WorkloadAttestorPlugin` or `NodeAttestorPlugin` object.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from insignia.daemon.config.loading import StrictModel
from insignia.daemon.peercred.credentials import PeerCredentials
from insignia.selectors import Selector
from insignia.spiffeid import SpiffeId, TrustDomain


class AttestationError(Exception):
    """Attestation refused or impossible; `plugin` names the attestor, `reason` says why."""

    def __init__(self, plugin: str, reason: str) -> None:
        super().__init__(f"{plugin} attestor: {reason}")
        self.plugin = plugin
        self.reason = reason


class PluginConfig(StrictModel, frozen=True, kw_only=True):
    """Base for plugin config sections: unknown keys are errors, values frozen."""


class WorkloadAttestor(Protocol):
    async def attest(self, caller: PeerCredentials) -> list[Selector]:
        """Selectors describing `caller`, read from the kernel or a runtime, never the caller.

        Raises AttestationError when the facts cannot be established.
        """
        ...


@dataclass(frozen=True, slots=True)
class WorkloadAttestorPlugin:
    """What a `insignia.workload_attestors` entry point names.

    `selector_types` lists the only selector types the plugin may emit, so one plugin cannot
    forge another's selectors (a third-party plugin emitting `unix:uid:0` is refused).
    `selector_keys` declares, per type, the keys its values start with (`uid` of
    `unix:uid:1001`), so `entry create` can refuse a typo such as `unix:colour:red` instead of
    storing an entry nothing will ever match; None leaves a plugin's keys undeclared (any
    non-empty value is accepted).
    """

    config_model: type[PluginConfig]
    selector_types: frozenset[str]
    create: Callable[[Any], WorkloadAttestor]
    selector_keys: Mapping[str, frozenset[str]] | None = None


# --- node attestation -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Challenge:
    """Opaque bytes the server sends to the agent; the agent's plugin answers them."""

    data: bytes


@dataclass(frozen=True, slots=True)
class AgentAttestation:
    """A successful node attestation: who the agent is and what is known about its node."""

    agent_id: SpiffeId
    selectors: tuple[Selector, ...]
    can_reattest: bool


Step = Challenge | AgentAttestation


class NodeAttestationSession(Protocol):
    """One attestation attempt on the server. Single use: state (nonces) dies with it."""

    async def begin(self, payload: bytes) -> Step: ...

    async def answer(self, response: bytes) -> Step: ...


class NodeAttestorServer(Protocol):
    def session(self) -> NodeAttestationSession: ...


class NodeAttestorAgent(Protocol):
    async def payload(self) -> bytes:
        """The evidence that opens an attestation."""
        ...

    async def answer(self, challenge: bytes) -> bytes:
        """The response to one server challenge."""
        ...


class JoinTokenStore(Protocol):
    """Implemented by the server's datastore.

    `consume_token` must be atomic: it returns True exactly once for a token that exists,
    was never used and has not expired at `now`, and False for everything else.
    """

    async def consume_token(self, token: str, now: datetime) -> bool: ...


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class ServerEnvironment:
    """What the server hands a node attestor's server side besides its own config."""

    trust_domain: TrustDomain
    token_store: JoinTokenStore | None = None
    clock: Callable[[], datetime] = field(default=_utc_now)


@dataclass(frozen=True, slots=True)
class NodeAttestorPlugin:
    """What a `insignia.node_attestors` entry point names: both halves and their configs."""

    agent_config: type[PluginConfig]
    server_config: type[PluginConfig]
    create_agent: Callable[[Any, TrustDomain], NodeAttestorAgent]
    create_server: Callable[[Any, ServerEnvironment], NodeAttestorServer]
    #: Node selector types and their keys, as `WorkloadAttestorPlugin.selector_keys` (for node
    #: alias entries); None: undeclared.
    selector_keys: Mapping[str, frozenset[str]] | None = None
