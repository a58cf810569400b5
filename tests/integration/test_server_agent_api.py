"""The agent API of a real server process, driven as an agent would."""

from __future__ import annotations

import sqlite3
import subprocess
import time
from pathlib import Path

import grpc
import pytest
from insignia_proto import admin_pb2, agent_pb2, agent_pb2_grpc

from devtools.harness.agent_api_client import (
    attest_join_token,
    attestation_channel,
    der_chain_to_pem,
    make_csr,
)
from devtools.harness.server_process import ServerProcess
from insignia.attestors.node.join_token import JoinTokenPayload
from insignia.attestors.node.messages import encode
from insignia.keys import KeyType, generate_key
from tests.integration.conftest import ServerFactory

pytestmark = pytest.mark.integration


def openssl_verify(server: ServerProcess, chain_der: bytes, directory: Path) -> str:
    """`openssl verify` of a leaf-first DER chain against `bundle show --format pem`."""
    chain = der_chain_to_pem(chain_der)
    leaf_end = chain.index(b"-----END CERTIFICATE-----") + len(b"-----END CERTIFICATE-----\n")
    (directory / "leaf.pem").write_bytes(chain[:leaf_end])
    (directory / "untrusted.pem").write_bytes(chain[leaf_end:] or b"")
    args = ["openssl", "verify", "-CAfile", str(server.write_bundle())]
    if chain[leaf_end:]:
        args += ["-untrusted", str(directory / "untrusted.pem")]
    result = subprocess.run([*args, str(directory / "leaf.pem")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_join_token_attest_sync_and_sign(running_server: ServerProcess, tmp_path: Path) -> None:
    server = running_server
    token = server.join_token()
    agent = attest_join_token(server, token)
    assert agent.agent_id == server.agent_id(token)
    openssl_verify(server, agent.chain_der, tmp_path)
    entry_id = server.create_entry(
        "spiffe://example.org/web", agent.agent_id, ["unix:uid:1000"], "--dns", "web.example.org"
    )
    with agent.channel() as channel:
        stream = agent.stub(channel).Sync(agent_pb2.SyncRequest(), timeout=30)
        first = next(stream)
        assert first.full
        assert [e.id for e in first.entries] == [entry_id]
        assert first.entries[0].x509_svid_ttl == 3600
        assert b"x509-svid" in first.bundle.spiffe_bundle
        # a new entry reaches the open stream well under a second after the admin API
        # call that creates it (what the CLI sends; the CLI's own start-up is not counted)
        new = admin_pb2.Entry(
            spiffe_id="spiffe://example.org/db", parent_id=agent.agent_id, selectors=["unix:uid:7"]
        )
        with server.admin() as admin:
            started = time.monotonic()
            second_id = (
                admin.CreateEntries(admin_pb2.CreateEntriesRequest(entries=[new])).entries[0].id
            )
            update = next(stream)
            assert time.monotonic() - started < 1.0
        assert not update.full
        assert [e.id for e in update.entries] == [second_id]
        # sign for an authorized entry; openssl accepts the chain against the bundle
        key = generate_key(KeyType.EC_P256)
        result = agent.sign_x509(channel, entry_id, make_csr(key, ["spiffe://example.org/web"]))
        assert result.error == ""
        openssl_verify(server, result.svid_chain, tmp_path)
        server.cli("entry", "delete", second_id)
        update = next(stream)
        assert list(update.deleted_entry_ids) == [second_id]
        stream.cancel()


def test_csr_refusals(running_server: ServerProcess) -> None:
    server = running_server
    agent = attest_join_token(server, server.join_token())
    entry_id = server.create_entry("spiffe://example.org/web", agent.agent_id, ["unix:uid:1"])
    other = server.create_entry(
        "spiffe://example.org/other", "spiffe://example.org/elsewhere", ["unix:uid:1"]
    )
    key = generate_key(KeyType.EC_P256)
    good_id = "spiffe://example.org/web"
    bad_signature = bytearray(make_csr(key, [good_id]))
    bad_signature[-5] ^= 0xFF
    cases = {
        "not authorized": (other, make_csr(key, ["spiffe://example.org/other"])),
        "extra DNS SANs": (entry_id, make_csr(key, [good_id], dns=["evil.example.org"])),
        "URI SANs": (entry_id, make_csr(key, [good_id, "spiffe://example.org/x"])),
        "CA certificate": (entry_id, make_csr(key, [good_id], ca=True)),
        "signature": (entry_id, bytes(bad_signature)),
    }
    with agent.channel() as channel:
        for expected, (eid, csr) in cases.items():
            result = agent.sign_x509(channel, eid, csr)
            assert result.svid_chain == b""
            assert expected in result.error, (expected, result.error)


def test_jwt_svid(running_server: ServerProcess) -> None:
    import jwt as pyjwt

    server = running_server
    agent = attest_join_token(server, server.join_token())
    entry_id = server.create_entry("spiffe://example.org/api", agent.agent_id, ["unix:uid:1"])
    with agent.channel() as channel:
        request = agent_pb2.BatchNewJWTSVIDRequest(
            params=[agent_pb2.JWTSVIDParams(entry_id=entry_id, audience=["a", "b"])]
        )
        result = agent.stub(channel).BatchNewJWTSVID(request, timeout=30).results[0]
    assert result.error == ""
    claims = pyjwt.decode(result.token, options={"verify_signature": False})
    assert claims["sub"] == "spiffe://example.org/api"
    assert claims["aud"] == ["a", "b"]
    assert result.expires_at - result.issued_at == 300


def test_used_and_expired_tokens_are_refused(running_server: ServerProcess) -> None:
    server = running_server
    token = server.join_token()
    attest_join_token(server, token)
    with pytest.raises(grpc.RpcError) as used:
        attest_join_token(server, token)
    assert used.value.code() == grpc.StatusCode.PERMISSION_DENIED
    generated = server.cli_json("token", "generate", "--ttl", "1")
    # Waiting for the clock to pass expires_at is the event itself, not a synchronisation.
    while time.time() <= int(generated["expires_at"]) + 0.2:
        time.sleep(0.05)
    with pytest.raises(grpc.RpcError) as late:
        attest_join_token(server, generated["token"])
    assert late.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_evict_and_ban(running_server: ServerProcess) -> None:
    server = running_server
    agent = attest_join_token(server, server.join_token())
    with agent.channel() as channel:
        stream = agent.stub(channel).Sync(agent_pb2.SyncRequest())
        next(stream)
        server.cli("agent", "evict", agent.agent_id)
        with pytest.raises(grpc.RpcError) as evicted:
            for update in stream:  # only heartbeats may come before the refusal
                assert update.heartbeat, update
        assert evicted.value.code() == grpc.StatusCode.PERMISSION_DENIED
    banned = attest_join_token(server, server.join_token())
    assert server.cli_json("agent", "ban", banned.agent_id)["banned"] is True
    with banned.channel() as channel, pytest.raises(grpc.RpcError) as refused:
        banned.stub(channel).BatchNewJWTSVID(agent_pb2.BatchNewJWTSVIDRequest(), timeout=30)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "banned" in (refused.value.details() or "")


def test_sync_resumes_without_resending(running_server: ServerProcess) -> None:
    server = running_server
    agent = attest_join_token(server, server.join_token())
    first_id = server.create_entry("spiffe://example.org/a", agent.agent_id, ["unix:uid:1"])
    kept_id = server.create_entry("spiffe://example.org/b", agent.agent_id, ["unix:uid:2"])
    with agent.channel() as channel:
        stream = agent.stub(channel).Sync(agent_pb2.SyncRequest(), timeout=60)
        full = next(stream)
        stream.cancel()
        assert {e.id for e in full.entries} == {first_id, kept_id}
        server.cli("entry", "delete", first_id)
        new_id = server.create_entry("spiffe://example.org/c", agent.agent_id, ["unix:uid:3"])
        resume = agent_pb2.SyncRequest(store_id=full.store_id, since_revision=full.revision)
        stream = agent.stub(channel).Sync(resume, timeout=60)
        delta = next(stream)
        stream.cancel()
        assert not delta.full
        assert [e.id for e in delta.entries] == [new_id]  # b is not resent
        assert list(delta.deleted_entry_ids) == [first_id]
        unknown = agent_pb2.SyncRequest(store_id="another-server", since_revision=delta.revision)
        stream = agent.stub(channel).Sync(unknown, timeout=60)
        again = next(stream)
        stream.cancel()
        assert again.full and {e.id for e in again.entries} == {kept_id, new_id}


def test_renew_agent_svid(running_server: ServerProcess) -> None:
    server = running_server
    agent = attest_join_token(server, server.join_token())
    old_serial = server.cli_json("agent", "show", agent.agent_id)["serial"]
    new_key = generate_key(KeyType.EC_P256)
    empty = agent_pb2.BatchNewJWTSVIDRequest()
    with agent.channel() as old_channel:
        renewed = agent.stub(old_channel).RenewAgent(
            agent_pb2.RenewAgentRequest(csr=make_csr(new_key)), timeout=30
        )
        # until the new SVID is used, the old one still works
        agent.stub(old_channel).BatchNewJWTSVID(empty, timeout=30)
        agent.key, agent.chain_der = new_key, renewed.svid_chain
        with agent.channel() as new_channel:
            agent.stub(new_channel).BatchNewJWTSVID(empty, timeout=30)
        assert server.cli_json("agent", "show", agent.agent_id)["serial"] != old_serial
        with pytest.raises(grpc.RpcError) as stale:
            agent.stub(old_channel).BatchNewJWTSVID(empty, timeout=30)
        assert stale.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "not current" in (stale.value.details() or "")


def test_per_ip_rate_limits(server_factory: ServerFactory) -> None:
    limits = {"attestation_rate": 0.01, "x509_signing_rate": 5, "jwt_signing_rate": 5}
    server = server_factory(agent_api=limits)
    agent = attest_join_token(server, server.join_token())
    with pytest.raises(grpc.RpcError) as limited:
        attest_join_token(server, server.join_token())
    assert limited.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    entry_id = server.create_entry("spiffe://example.org/w", agent.agent_id, ["unix:uid:1"])
    params = agent_pb2.JWTSVIDParams(entry_id=entry_id, audience=["a"])
    with agent.channel() as channel:
        stub = agent.stub(channel)
        stub.BatchNewJWTSVID(agent_pb2.BatchNewJWTSVIDRequest(params=[params] * 5), timeout=30)
        with pytest.raises(grpc.RpcError) as over:
            stub.BatchNewJWTSVID(agent_pb2.BatchNewJWTSVIDRequest(params=[params] * 5), timeout=30)
        assert over.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "jwt signing rate limit" in (over.value.details() or "")
        # A workload spending its node's JWT budget does not hold up X.509 rotation.
        csr = make_csr(generate_key(KeyType.EC_P256), ["spiffe://example.org/w"])
        x509_params = [agent_pb2.X509SVIDParams(entry_id=entry_id, csr=csr)] * 5
        batch = stub.BatchNewX509SVID(
            agent_pb2.BatchNewX509SVIDRequest(params=x509_params), timeout=30
        )
        assert all(r.svid_chain and not r.error for r in batch.results)


def attest_with_csr(server: ServerProcess, token: str, csr: bytes) -> agent_pb2.AttestResult:
    params = agent_pb2.AttestParams(
        attestor="join_token", payload=encode(JoinTokenPayload(token=token)), csr=csr
    )
    with attestation_channel(server) as channel:
        stub = agent_pb2_grpc.AgentAPIStub(channel)
        responses = list(stub.Attest(iter([agent_pb2.AttestRequest(params=params)]), timeout=30))
    return responses[-1].result


def test_a_refused_csr_does_not_use_up_the_join_token(running_server: ServerProcess) -> None:
    server = running_server
    token = server.join_token()
    key = generate_key(KeyType.EC_P256)
    for bad_csr in (
        make_csr(key, [server.agent_id(token)], dns=["node.example.org"]),
        make_csr(key, ["spiffe://example.org/not-an-agent"]),
        make_csr(key, [server.agent_id(token)], ca=True),
        b"not a CSR",
    ):
        with pytest.raises(grpc.RpcError) as refused:
            attest_with_csr(server, token, bad_csr)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    result = attest_with_csr(server, token, make_csr(key, [server.agent_id(token)]))
    assert result.agent_id == server.agent_id(token)


def test_internal_errors_do_not_leak_to_callers(running_server: ServerProcess) -> None:
    server = running_server
    token = server.join_token()
    database = server.data_dir / "datastore.sqlite3"
    with sqlite3.connect(database, timeout=30) as db:
        db.execute("ALTER TABLE agents RENAME TO agents_elsewhere")
    try:
        with pytest.raises(grpc.RpcError) as failed:
            attest_join_token(server, token)
    finally:
        with sqlite3.connect(database, timeout=30) as db:
            db.execute("ALTER TABLE agents_elsewhere RENAME TO agents")
    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
    assert failed.value.details() == "the server's datastore is unavailable; retry later"
    logged = [r for r in server.log_lines() if r.get("event") == "datastore unavailable"]
    assert logged and "no such table: agents" in logged[-1]["error"]  # the detail stays here
    assert attest_join_token(server, token).agent_id == server.agent_id(token)  # not burnt
