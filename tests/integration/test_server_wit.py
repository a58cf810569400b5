"""WIT-SVID issuance on the server: its own signing keys and rotation, the entry TTL, and
BatchNewWITSVID binding the agent's public key (checked here with jwcrypto, not our code)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from insignia_proto import agent_pb2
from jwcrypto import jwk, jws

from devtools.harness.agent_api_client import AttestedAgent, attest_join_token
from devtools.harness.server_process import ServerProcess
from insignia.bundle import Bundle, public_key_to_jwk
from insignia.keys import KeyType, generate_key, private_key_to_jwk
from insignia.spiffeid import TrustDomain

pytestmark = pytest.mark.integration
TD = TrustDomain.parse("example.org")


def wit_keys(state: agent_pb2.BundleState) -> set[str]:
    return set(Bundle.parse_spiffe(TD, state.spiffe_bundle).wit_authorities)


def bundle_updates(stream: Iterator[agent_pb2.SyncUpdate]) -> Iterator[agent_pb2.BundleState]:
    for update in stream:
        if update.HasField("bundle"):
            yield update.bundle


def sign_wit(agent: AttestedAgent, entry_id: str, public_jwk: str) -> agent_pb2.WITSVIDResult:
    request = agent_pb2.BatchNewWITSVIDRequest(
        params=[agent_pb2.WITSVIDParams(entry_id=entry_id, public_jwk=public_jwk)]
    )
    with agent.channel() as channel:
        result: agent_pb2.WITSVIDResult = (
            agent.stub(channel).BatchNewWITSVID(request, timeout=30).results[0]
        )
    return result


def test_wit_keys_rotate_apart_from_jwt_keys(running_server: ServerProcess) -> None:
    server = running_server
    agent = attest_join_token(server, server.join_token())
    with agent.channel() as channel:
        stream = agent.stub(channel).Sync(agent_pb2.SyncRequest(), timeout=120)
        updates = bundle_updates(stream)
        first = next(updates)
        bundle = Bundle.parse_spiffe(TD, first.spiffe_bundle)
        ((old,),) = (wit_keys(first),)
        assert old not in bundle.jwt_authorities
        jwt_before = set(bundle.jwt_authorities)
        shown = server.cli_json("authority", "wit", "show")["authorities"]
        assert [(a["authority_id"], a["state"]) for a in shown] == [(old, "active")]
        refused = server.cli("authority", "wit", "taint", old, check=False)
        assert refused.returncode == 1 and "only an old authority can be tainted" in refused.stderr
        prepared = server.cli_json("authority", "wit", "prepare")["authority_id"]
        assert wit_keys(next(updates)) == {old, prepared}  # published before use
        server.cli("authority", "wit", "activate")
        server.cli("authority", "wit", "taint", old)
        state = next(updates)
        assert list(state.tainted_wit_authorities) == [old]
        assert not state.tainted_jwt_authorities  # the JWT keys are untouched
        server.cli("authority", "wit", "revoke", old)
        state = next(updates)
        assert wit_keys(state) == {prepared}
        assert set(Bundle.parse_spiffe(TD, state.spiffe_bundle).jwt_authorities) == jwt_before
        stream.cancel()


def test_batch_new_wit_svid_binds_the_agents_key(running_server: ServerProcess) -> None:
    server = running_server
    agent = attest_join_token(server, server.join_token())
    entry_id = server.create_entry(
        "spiffe://example.org/api", agent.agent_id, ["unix:uid:1"], "--wit-svid-ttl", "120"
    )
    workload_key = generate_key(KeyType.EC_P256)
    public = {**public_key_to_jwk(workload_key.public_key()), "alg": "ES256"}
    result = sign_wit(agent, entry_id, json.dumps(public))
    assert result.error == ""
    assert result.expires_at - result.issued_at == 120

    bundle = Bundle.parse_spiffe(TD, server.cli("bundle", "show", "--format", "spiffe").stdout)
    (kid,) = bundle.wit_authorities
    verifier = jws.JWS()
    verifier.deserialize(result.token)
    key = jwk.JWK(**{**public_key_to_jwk(bundle.wit_authorities[kid]), "kid": kid})
    verifier.verify(key)  # raises unless the WIT key signed it
    header = verifier.jose_header
    assert header == {"alg": "ES256", "kid": kid, "typ": "wit+jwt"}
    claims = json.loads(verifier.payload)
    assert set(claims) == {"sub", "cnf", "exp", "iat", "nbf", "jti"}
    assert claims["sub"] == "spiffe://example.org/api"
    assert claims["cnf"] == {"jwk": public}
    assert claims["exp"] - claims["iat"] == 120
    # a second token gets a fresh jti
    second = jws.JWS()
    second.deserialize(sign_wit(agent, entry_id, json.dumps(public)).token)
    second.verify(key)
    assert json.loads(second.payload)["jti"] != claims["jti"]


def test_refused_keys_and_entries(running_server: ServerProcess) -> None:
    server = running_server
    agent = attest_join_token(server, server.join_token())
    entry_id = server.create_entry("spiffe://example.org/api", agent.agent_id, ["unix:uid:1"])
    key = generate_key(KeyType.EC_P256)
    public = {**public_key_to_jwk(key.public_key()), "alg": "ES256"}
    cases = {
        "not JSON": "{",
        "private members": json.dumps(private_key_to_jwk(key)),
        "alg 'none'": json.dumps({**public, "alg": "none"}),
        "does not fit": json.dumps({**public, "alg": "ES384"}),
    }
    for expected, text in cases.items():
        result = sign_wit(agent, entry_id, text)
        assert result.token == "" and expected in result.error, (expected, result.error)
    stranger = sign_wit(agent, "no-such-entry", json.dumps(public))
    assert "is not authorized" in stranger.error
    too_long = server.cli(
        "entry",
        "create",
        "--spiffe-id",
        "spiffe://example.org/x",
        "--parent-id",
        agent.agent_id,
        "--selector",
        "unix:uid:2",
        "--wit-svid-ttl",
        "1",
        check=False,
    )
    assert too_long.returncode != 0 and "wit_svid_ttl" in too_long.stderr
    shown = server.cli("entry", "show", "--id", entry_id).stdout
    assert "WIT-SVID TTL   : default" in shown
