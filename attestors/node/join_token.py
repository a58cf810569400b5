"""Node attestor `join_token`: a one-time secret an operator minted on the server.

The agent sends the token; the server consumes it through its datastore (`JoinTokenStore`),
which is atomic, so two agents racing with one token get one identity between them. The agent
ID is `spiffe://<td>/insignia/agent/join_token/<token>`. A used token can never attest again,
so such an agent cannot re-attest (`can_reattest = False`): once evicted it needs a new token.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Final

import msgspec
import trio
from msgspec import Meta

from insignia.attestors.interface import (
    AgentAttestation,
    AttestationError,
    JoinTokenStore,
    NodeAttestorPlugin,
    PluginConfig,
    ServerEnvironment,
    Step,
)
from insignia.attestors.node.messages import Message, decode, encode
from insignia.daemon.reserved_ids import agent_spiffe_id
from insignia.spiffeid import TrustDomain

NAME: Final = "join_token"
#: Tokens become a path segment of the agent ID, so they use the SPIFFE path alphabet.
TOKEN_PATTERN: Final = r"^[A-Za-z0-9._-]{1,256}$"  # noqa: S105 (a pattern, not a secret)
Token = Annotated[str, Meta(pattern=TOKEN_PATTERN)]


class JoinTokenPayload(Message, frozen=True, kw_only=True):
    token: Token


class JoinTokenAgentConfig(PluginConfig, frozen=True, kw_only=True):
    """Exactly one of `token` (often given on the command line) or `token_file`."""

    token: Token | None = None
    token_file: Path | None = None

    def __post_init__(self) -> None:
        if (self.token is None) == (self.token_file is None):
            raise ValueError("set exactly one of token and token_file")


class JoinTokenServerConfig(PluginConfig, frozen=True, kw_only=True):
    """No settings: tokens and their TTLs live in the datastore."""


class JoinTokenAgent:
    def __init__(self, config: JoinTokenAgentConfig, trust_domain: TrustDomain) -> None:
        self._config = config

    async def payload(self) -> bytes:
        token = self._config.token
        if token is None:
            assert self._config.token_file is not None
            path = trio.Path(self._config.token_file)
            try:
                token = (await path.read_text()).strip()
            except OSError as exc:
                raise AttestationError(NAME, f"cannot read token_file {path}: {exc}") from exc
        try:
            return encode(msgspec.convert({"token": token}, JoinTokenPayload))
        except msgspec.ValidationError as exc:  # the token stays out of the message: a secret
            raise AttestationError(
                NAME, f"configured join token is malformed; expected {TOKEN_PATTERN}"
            ) from exc

    async def answer(self, challenge: bytes) -> bytes:
        raise AttestationError(NAME, "the server sent a challenge; join_token expects none")


class JoinTokenSession:
    def __init__(self, store: JoinTokenStore, env: ServerEnvironment) -> None:
        self._store = store
        self._env = env
        self._used = False

    async def begin(self, payload: bytes) -> Step:
        if self._used:
            raise AttestationError(NAME, "session already used")
        self._used = True
        token = decode(NAME, payload, JoinTokenPayload).token
        if not await self._store.consume_token(token, self._env.clock()):
            raise AttestationError(NAME, "join token is unknown, already used or expired")
        agent_id = agent_spiffe_id(self._env.trust_domain, NAME, token)
        return AgentAttestation(agent_id=agent_id, selectors=(), can_reattest=False)

    async def answer(self, response: bytes) -> Step:
        raise AttestationError(NAME, "join_token asks no challenge, so expects no answer")


class JoinTokenServer:
    def __init__(self, config: JoinTokenServerConfig, env: ServerEnvironment) -> None:
        if env.token_store is None:
            raise ValueError("join_token needs the server's token store")
        self._store = env.token_store
        self._env = env

    def session(self) -> JoinTokenSession:
        return JoinTokenSession(self._store, self._env)


PLUGIN: Final = NodeAttestorPlugin(
    agent_config=JoinTokenAgentConfig,
    server_config=JoinTokenServerConfig,
    create_agent=JoinTokenAgent,
    create_server=JoinTokenServer,
    selector_keys={},  # join-token agents have no node selectors
)
