"""WIT-SVIDs through the agent's Workload API: FetchWITSVID and FetchWITBundles on a real
server and agent, checked by jwcrypto (not our code), and rotation on a long-lived stream."""

from __future__ import annotations

import json
import os
import subprocess
from datetime import UTC, datetime

import grpc
import pytest
from insignia_proto import workload_pb2 as pb
from jwcrypto import jwk, jws

from devtools.harness.agent_clients import UID_B, agent_cli, register
from devtools.harness.agent_process import AgentProcess
from devtools.harness.other_uids import python_as
from devtools.harness.server_process import ServerProcess
from devtools.harness.waiting import wait_for
from insignia.bundle import BundleSet
from insignia.spiffeid import TrustDomain
from insignia.wit import InvalidWit, Reason, ReplayCache, verify_request
from insignia.workload_wire import SECURITY_HEADER, WorkloadApiSyncStub
from insignia.workloadapi import WorkloadApiClient, WorkloadApiError, grpc_target

pytestmark = [pytest.mark.integration, pytest.mark.root]
URI = "http://127.0.0.1:9/api"


def client(agent: AgentProcess) -> WorkloadApiClient:
    return WorkloadApiClient(agent.socket_path, timeout=30)


def jwks_key_set(document: str | bytes) -> jwk.JWKSet:
    keys = jwk.JWKSet()
    keys.import_keyset(document if isinstance(document, str) else document.decode())
    return keys


def raw_wit_message(agent: AgentProcess) -> pb.WITSVIDResponse:
    with grpc.insecure_channel(grpc_target(agent.socket_path)) as channel:
        stream = WorkloadApiSyncStub(channel).FetchWITSVID(
            pb.WITSVIDRequest(), metadata=SECURITY_HEADER, timeout=30
        )
        message: pb.WITSVIDResponse = next(stream)
        stream.cancel()
        return message


def raw_bundles(agent: AgentProcess, method: str) -> dict[str, str | bytes]:
    with grpc.insecure_channel(grpc_target(agent.socket_path)) as channel:
        stub = WorkloadApiSyncStub(channel)
        call = (
            stub.FetchWITBundles(pb.WITBundlesRequest(), metadata=SECURITY_HEADER, timeout=30)
            if method == "wit"
            else stub.FetchJWTBundles(pb.JWTBundlesRequest(), metadata=SECURITY_HEADER, timeout=30)
        )
        message = next(call)
        call.cancel()
        return dict(message.bundles)


def test_wit_svid_checked_by_jwcrypto(
    running_server: ServerProcess, running_agent: AgentProcess
) -> None:
    td = running_server.trust_domain
    register(
        running_server,
        running_agent,
        "/wit-a",
        f"unix:uid:{os.getuid()}",
        extra=("--wit-svid-ttl", "600", "--hint", "internal"),
    )
    message = raw_wit_message(running_agent)
    (svid,) = message.svids
    assert svid.spiffe_id == f"spiffe://{td}/wit-a" and svid.hint == "internal"
    private = jwk.JWK.from_json(svid.wit_svid_key)
    assert private.has_private

    wit_bundles = raw_bundles(running_agent, "wit")
    assert list(wit_bundles) == [f"spiffe://{td}"]
    assert isinstance(wit_bundles[f"spiffe://{td}"], str)  # map<string, string>, per the spec
    wit_keys = jwks_key_set(wit_bundles[f"spiffe://{td}"])
    token = jws.JWS()
    token.deserialize(svid.wit_svid)
    header = token.jose_header
    assert set(header) == {"alg", "kid", "typ"} and header["typ"] == "wit+jwt"
    assert header["alg"] == "ES256"
    published = wit_keys.get_key(header["kid"])
    assert published is not None and published.get("use") == "wit-svid"
    # jwcrypto verifies only with use "sig" keys: the same key, its use dropped
    signer = jwk.JWK(**{k: v for k, v in json.loads(published.export()).items() if k != "use"})
    token.verify(signer)  # jwcrypto raises unless the bundle's WIT key signed it

    claims = json.loads(token.payload)
    assert claims["sub"] == f"spiffe://{td}/wit-a"
    assert "aud" not in claims and "iss" not in claims
    assert isinstance(claims["jti"], str) and len(claims["jti"]) >= 16
    assert claims["exp"] - claims["iat"] == 600
    # cnf.jwk is exactly the public half of the key we were handed, with its alg
    public = json.loads(private.export_public())
    assert claims["cnf"]["jwk"] == {**public, "alg": "ES256"}

    # the agent CLI shows the same identity, and never the private key
    shown = agent_cli("api", "fetch", "wit", "--socket", running_agent.endpoint)
    assert shown.returncode == 0, shown.stderr
    assert f"wit(spiffe://{td}/wit-a, key ES256):" in shown.stdout
    assert private.export_private() not in shown.stdout and '"d"' not in shown.stdout

    # the JWT bundle's keys cannot verify it: the WIT key is not among them
    jwt_keys = jwks_key_set(raw_bundles(running_agent, "jwt")[f"spiffe://{td}"])
    assert jwt_keys.get_key(header["kid"]) is None
    for key in jwt_keys["keys"]:
        again = jws.JWS()
        again.deserialize(svid.wit_svid)
        with pytest.raises(jws.InvalidJWSSignature):
            again.verify(key, alg=header["alg"])


def test_no_entry_is_denied_and_revoked_wit_keys_leave_the_wit_bundle(
    running_server: ServerProcess, running_agent: AgentProcess
) -> None:
    with client(running_agent) as api, pytest.raises(WorkloadApiError) as denied:
        api.fetch_wit_svids()
    assert denied.value.code == grpc.StatusCode.PERMISSION_DENIED
    register(running_server, running_agent, "/no-wit", f"unix:uid:{os.getuid()}")
    wit = [
        a["authority_id"]
        for a in running_server.cli_json("authority", "wit", "show")["authorities"]
    ]
    # Retire every WIT key the domain had: only their successor stays in FetchWITBundles.
    # (A trust domain with no WIT keys at all is left out of the map: test_wit_views.py.)
    prepared = running_server.cli_json("authority", "wit", "prepare")["authority_id"]
    running_server.cli("authority", "wit", "activate")
    for kid in wit:
        running_server.cli("authority", "wit", "taint", kid)
        running_server.cli("authority", "wit", "revoke", kid)
    with client(running_agent) as api:
        wait_for(
            lambda: (
                set(
                    api.fetch_wit_bundles()
                    .bundles[TrustDomain(running_server.trust_domain)]
                    .wit_authorities
                )
                == {prepared}
            ),
            30,
            "the revoked WIT keys to leave the agent's bundle",
        )
    # A named identity the caller does not hold is denied too.
    with client(running_agent) as api, pytest.raises(WorkloadApiError) as other:
        api.fetch_wit_svids(f"spiffe://{running_server.trust_domain}/someone-else")
    assert other.value.code == grpc.StatusCode.PERMISSION_DENIED


def test_taint_pushes_a_new_token_and_key_and_revoke_kills_the_old_pair(
    running_server: ServerProcess, running_agent: AgentProcess
) -> None:
    td = running_server.trust_domain
    register(running_server, running_agent, "/rotating-wit", f"unix:uid:{os.getuid()}")
    with client(running_agent) as api:
        stream = api.watch_wit_svids()
        (first,) = next(stream)
        bundles: BundleSet = api.fetch_wit_bundles()
        old = next(iter(bundles.bundles[TrustDomain(running_server.trust_domain)].wit_authorities))
        headers = first.headers(URI, "GET")
        assert (
            verify_request("GET", URI, headers, bundles, ReplayCache()).spiffe_id == first.spiffe_id
        )

        running_server.cli("authority", "wit", "prepare")
        running_server.cli("authority", "wit", "activate")
        running_server.cli("authority", "wit", "taint", old)
        (second,) = next(stream)  # the same open stream: pushed, not polled
        assert second.token != first.token
        assert second.private_key.public_key().public_numbers() != (
            first.private_key.public_key().public_numbers()
        )
        assert str(second.spiffe_id) == f"spiffe://{td}/rotating-wit"

        running_server.cli("authority", "wit", "revoke", old)
        wait_for(
            lambda: (
                old
                not in api.fetch_wit_bundles()
                .bundles[TrustDomain(running_server.trust_domain)]
                .wit_authorities
            ),
            30,
            "the revoked key to leave the bundle",
        )
        fresh = api.fetch_wit_bundles()
        stream.close()
    with pytest.raises(InvalidWit) as refused:
        verify_request("GET", URI, first.headers(URI, "GET"), fresh, ReplayCache())
    assert refused.value.reason is Reason.UNKNOWN_KEY
    ok = verify_request("GET", URI, second.headers(URI, "GET"), fresh, ReplayCache())
    assert ok.spiffe_id == second.spiffe_id and ok.expiry > datetime.now(UTC)


def test_another_uid_gets_no_one_elses_wit(
    running_server: ServerProcess, running_agent: AgentProcess
) -> None:
    register(running_server, running_agent, "/only-root", f"unix:uid:{os.getuid()}")
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from insignia.workloadapi import WorkloadApiClient, WorkloadApiError\n"
        "try:\n"
        "    WorkloadApiClient(Path(sys.argv[1]), timeout=30).fetch_wit_svids()\n"
        "except WorkloadApiError as exc:\n"
        "    print(exc.code.name)\n"
    )
    python, env = python_as(UID_B)
    result = subprocess.run(
        [*python, "-c", script, str(running_agent.socket_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.stdout.strip() == "PERMISSION_DENIED", result


def test_a_wit_svid_and_its_key_rotate_at_half_life_on_an_open_stream(
    running_server: ServerProcess, running_agent: AgentProcess
) -> None:
    register(
        running_server,
        running_agent,
        "/short-wit",
        f"unix:uid:{os.getuid()}",
        extra=("--wit-svid-ttl", "4"),
    )
    with client(running_agent) as api:
        stream = api.watch_wit_svids()
        (first,) = next(stream)
        (second,) = next(stream)  # about 2 s later, with nothing done by anyone
        stream.close()
    assert second.token != first.token
    assert second.private_key.private_numbers() != first.private_key.private_numbers()
    claims = [
        json.loads(jws.JWS.from_jose_token(c.token).objects["payload"]) for c in (first, second)
    ]
    assert all(c["exp"] - c["iat"] == 4 for c in claims)
    assert claims[1]["iat"] >= claims[0]["iat"] + 1  # renewed at half life, not at once
