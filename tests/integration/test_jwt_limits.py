"""JWT-SVID requests are bounded at every boundary, and one caller's flood costs only itself.

Issue 12 items 3 and 4: audiences of any size and number were signed and cached (GBs of RSS
on both daemons), and a workload asking for ever new audiences spent the server's signing
budget for every workload of the node, and for every agent sharing its address.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import grpc
import pytest
from insignia_proto import agent_pb2

from devtools.harness.agent_api_client import AttestedAgent, attest_join_token
from devtools.harness.agent_clients import UID_A, UID_B, register
from devtools.harness.agent_process import AgentProcess
from devtools.harness.other_uids import python_as, read_line
from devtools.harness.server_process import ServerProcess
from tests.integration.conftest import AgentFactory, ServerFactory

WORKLOAD = Path(__file__).with_name("jwt_workload.py")
LIMIT_MESSAGES = {
    "count": "17 audiences exceed the limit of 16 (jwt_max_audiences)",
    "size": "audience 1 is 257 bytes, over the limit of 256 (jwt_max_audience_bytes)",
}


def workload(agent: AgentProcess, uid: int, *args: str, timeout: float = 90) -> Any:
    """Run jwt_workload.py as `uid` to completion; its last JSON line."""
    python, env = python_as(uid)
    result = subprocess.run(
        [*python, str(WORKLOAD), str(agent.socket_path), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd="/",
        check=False,
    )
    lines = result.stdout.strip().splitlines()
    assert lines, f"jwt_workload.py printed nothing; stderr:\n{result.stderr}"
    return json.loads(lines[-1])


# --- item 3: audience limits at each boundary -----------------------------------------------


def test_workload_api_refuses_oversize_audiences_and_serves_maximal_ones(
    running_server: ServerProcess, running_agent: AgentProcess
) -> None:
    register(running_server, running_agent, "/api", f"unix:uid:{UID_A}")
    for args, message in (
        (("sized", "17", "8"), LIMIT_MESSAGES["count"]),
        (("sized", "1", "257"), LIMIT_MESSAGES["size"]),
        (("sized", "1", str(1024 * 1024)), "audience 1 is 1048576 bytes, over the limit of 256"),
        (("once", "ok", "bad\tone"), "audience 2 contains a control character"),
    ):
        answer = workload(running_agent, UID_A, *args)
        assert answer["code"] == "INVALID_ARGUMENT", answer
        assert answer["detail"] == message or answer["detail"].startswith(message), answer
    maximal = workload(running_agent, UID_A, "sized", "16", "256")
    assert maximal["code"] == "OK", maximal
    assert 0 < max(maximal["tokens"]) <= 16 * 1024


def _jwt_request(entry_id: str, audience: list[str]) -> agent_pb2.BatchNewJWTSVIDRequest:
    return agent_pb2.BatchNewJWTSVIDRequest(
        params=[agent_pb2.JWTSVIDParams(entry_id=entry_id, audience=audience)]
    )


def test_agent_api_refuses_oversize_audiences(running_server: ServerProcess) -> None:
    agent = attest_join_token(running_server, running_server.join_token())
    entry_id = running_server.create_entry("spiffe://example.org/w", agent.agent_id, ["unix:uid:1"])
    with agent.channel() as channel:
        stub = agent.stub(channel)
        for audience, message in (
            (["a"] * 17, LIMIT_MESSAGES["count"]),
            (["x" * 257], LIMIT_MESSAGES["size"]),
            (["x" * (1024 * 1024)], "audience 1 is 1048576 bytes"),
        ):
            with pytest.raises(grpc.RpcError) as refused:
                stub.BatchNewJWTSVID(_jwt_request(entry_id, audience), timeout=30)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert (refused.value.details() or "").startswith(message)
        ok = stub.BatchNewJWTSVID(_jwt_request(entry_id, ["y" * 256] * 16), timeout=30)
        assert ok.results[0].token and not ok.results[0].error


def test_jwt_mint_refuses_oversize_audiences_in_one_line(server_factory: ServerFactory) -> None:
    server = server_factory(jwt_max_audiences=2, jwt_max_audience_bytes=8)
    mint = ["jwt", "mint", "--spiffe-id", "spiffe://example.org/w"]
    too_many = server.cli(
        *mint, "--audience", "a", "--audience", "b", "--audience", "c", check=False
    )
    assert too_many.returncode == 1
    assert too_many.stderr.strip().endswith(
        "INVALID_ARGUMENT: 3 audiences exceed the limit of 2 (jwt_max_audiences)"
    )
    too_long = server.cli(*mint, "--audience", "123456789", check=False)
    assert too_long.returncode == 1 and len(too_long.stderr.strip().splitlines()) == 1
    assert "audience 1 is 9 bytes, over the limit of 8 (jwt_max_audience_bytes)" in too_long.stderr
    assert server.cli(*mint, "--audience", "12345678", "--audience", "b").stdout.count(".") == 2


# --- item 4: per-caller and per-agent budgets --------------------------------------------------


def test_one_agents_flood_does_not_spend_another_agents_jwt_budget(
    server_factory: ServerFactory,
) -> None:
    server = server_factory(agent_api={"jwt_signing_rate": 5})
    agents: list[tuple[AttestedAgent, str]] = []
    for name in ("a", "b"):
        agent = attest_join_token(server, server.join_token())
        entry = server.create_entry(f"spiffe://example.org/{name}", agent.agent_id, ["unix:uid:1"])
        agents.append((agent, entry))
    (flooder, flood_entry), (neighbour, neighbour_entry) = agents
    with flooder.channel() as channel:
        stub = flooder.stub(channel)
        stub.BatchNewJWTSVID(_jwt_request(flood_entry, ["x"]), timeout=30)
        request = agent_pb2.BatchNewJWTSVIDRequest(
            params=[agent_pb2.JWTSVIDParams(entry_id=flood_entry, audience=["x"])] * 5
        )
        with pytest.raises(grpc.RpcError) as over:
            stub.BatchNewJWTSVID(request, timeout=30)
        assert over.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert f"for agent {flooder.agent_id} exceeded" in (over.value.details() or "")
    with neighbour.channel() as channel:  # same address, its own budget
        answer = neighbour.stub(channel).BatchNewJWTSVID(
            _jwt_request(neighbour_entry, ["y"]), timeout=30
        )
        assert answer.results[0].token


def test_a_flooding_uid_is_limited_and_its_neighbour_keeps_every_call(
    server_factory: ServerFactory, agent_factory: AgentFactory
) -> None:
    # A small server budget, so that today's unlimited flood would exhaust it at any speed.
    server = server_factory(name="limited", agent_api={"jwt_signing_rate": 40})
    agent = agent_factory(
        server=server, workload={"jwt_mint_rate_per_uid": 10, "jwt_mint_rate_per_spiffe_id": 10}
    )
    register(server, agent, "/flooder", f"unix:uid:{UID_A}")
    register(server, agent, "/neighbour", f"unix:uid:{UID_B}")
    python, env = python_as(UID_A)
    flood = subprocess.Popen(
        [*python, str(WORKLOAD), str(agent.socket_path), "flood", "120", "8", "1", "64"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
        cwd="/",
    )
    try:
        assert flood.stdin is not None and flood.stdout is not None
        assert json.loads(read_line(flood.stdout, 60, "the flood")) == {"started": True}
        neighbour = workload(agent, UID_B, "paced", "60", "0.2")
        flood.stdin.close()
        flooded = json.loads(read_line(flood.stdout, 60, "the flood's counts"))
        flood.wait(30)
    finally:
        if flood.poll() is None:
            flood.kill()
            flood.wait()
    assert neighbour["codes"] == {"OK": 60}, neighbour["details"]
    assert flooded["codes"].get("RESOURCE_EXHAUSTED", 0) > 0, flooded
    assert "jwt_mint_rate_per_uid = 10/s" in flooded["details"]["RESOURCE_EXHAUSTED"]
    assert set(flooded["codes"]) == {"OK", "RESOURCE_EXHAUSTED"}, flooded
