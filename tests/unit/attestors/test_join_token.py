from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import trio

from insignia.attestors.interface import AgentAttestation, AttestationError, ServerEnvironment
from insignia.attestors.node.join_token import (
    JoinTokenAgent,
    JoinTokenAgentConfig,
    JoinTokenServer,
    JoinTokenServerConfig,
)
from insignia.spiffeid import SpiffeId
from tests.unit.common import TD

T0 = datetime(2030, 1, 1, tzinfo=UTC)


class TokenTable:
    """The token-store protocol as the datastore implements it: one use, until expiry."""

    def __init__(self, tokens: dict[str, datetime]) -> None:
        self.expiry = dict(tokens)

    async def consume_token(self, token: str, now: datetime) -> bool:
        expires = self.expiry.pop(token, None)
        return expires is not None and now < expires


def server(store: TokenTable, now: datetime = T0) -> JoinTokenServer:
    return JoinTokenServer(JoinTokenServerConfig(), ServerEnvironment(TD, store, lambda: now))


async def attest(store: TokenTable, token: str, now: datetime = T0) -> AgentAttestation:
    payload = await JoinTokenAgent(JoinTokenAgentConfig(token=token), TD).payload()
    result = await server(store, now).session().begin(payload)
    assert isinstance(result, AgentAttestation)
    return result


async def test_a_valid_token_attests_once_with_spires_agent_id() -> None:
    store = TokenTable({"3f1c9a2e-7b4d": T0 + timedelta(minutes=10)})
    result = await attest(store, "3f1c9a2e-7b4d")
    assert result == AgentAttestation(
        agent_id=SpiffeId.parse("spiffe://example.org/insignia/agent/join_token/3f1c9a2e-7b4d"),
        selectors=(),
        can_reattest=False,
    )
    with pytest.raises(AttestationError, match="unknown, already used or expired"):
        await attest(store, "3f1c9a2e-7b4d")


async def test_unknown_and_expired_tokens_are_refused() -> None:
    store = TokenTable({"old": T0})
    with pytest.raises(AttestationError, match="join_token attestor: join token is unknown"):
        await attest(store, "never-issued")
    with pytest.raises(AttestationError, match="unknown, already used or expired"):
        await attest(store, "old", now=T0 + timedelta(seconds=1))


async def test_two_agents_racing_with_one_token_get_one_identity() -> None:
    store = TokenTable({"shared": T0 + timedelta(minutes=10)})
    outcomes: list[str] = []

    async def one() -> None:
        try:
            await attest(store, "shared")
            outcomes.append("ok")
        except AttestationError:
            outcomes.append("refused")

    async with trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(one)
    assert sorted(outcomes) == ["ok"] + ["refused"] * 4


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"not json", "malformed JoinTokenPayload"),
        (b'{"token": "../../admin"}', "token: expected string matching regex"),
        (b'{"token": "a", "extra": 1}', "extra: unknown key"),
        (b'{"token": 5}', "token: expected string, got integer"),
        (b"x" * 70000, "exceeds"),
    ],
)
async def test_malformed_payloads_are_refused_before_the_store_is_asked(
    payload: bytes, reason: str
) -> None:
    store = TokenTable({"a": T0 + timedelta(minutes=1)})
    with pytest.raises(AttestationError, match=reason):
        await server(store).session().begin(payload)
    assert "a" in store.expiry


async def test_a_session_is_single_use_and_takes_no_challenge_answers() -> None:
    store = TokenTable({"t1": T0 + timedelta(minutes=1), "t2": T0 + timedelta(minutes=1)})
    session = server(store).session()
    await session.begin(await JoinTokenAgent(JoinTokenAgentConfig(token="t1"), TD).payload())
    with pytest.raises(AttestationError, match="session already used"):
        await session.begin(b'{"token": "t2"}')
    with pytest.raises(AttestationError, match="expects no answer"):
        await session.answer(b"")
    with pytest.raises(AttestationError, match="expects none"):
        await JoinTokenAgent(JoinTokenAgentConfig(token="t1"), TD).answer(b"{}")


async def test_agent_reads_the_token_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("from-file\n")
    agent = JoinTokenAgent(JoinTokenAgentConfig(token_file=path), TD)
    assert await agent.payload() == b'{"token":"from-file"}'
    path.write_text("bad token with spaces")
    with pytest.raises(AttestationError, match="malformed") as info:
        await agent.payload()
    assert "spaces" not in str(info.value)  # the secret stays out of logs
    path.unlink()
    with pytest.raises(AttestationError, match="cannot read token_file"):
        await agent.payload()
