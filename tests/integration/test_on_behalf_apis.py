"""SPIRE's Delegated Identity API and the SPIFFE Broker API, against a real agent and server.

Every caller is its own process, attested by the agent: delegates and brokers are root
processes told apart by their gid (the admin socket's directory is root's alone), the workloads
they act for are `sleep` processes under other uids. Streams are followed record by record
(devtools/harness/on_behalf_client.py), and the audit lines are read from the agent's log.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from devtools.harness.agent_clients import UID_A, UID_B, register
from devtools.harness.agent_process import AgentProcess
from devtools.harness.other_uids import as_user, python_as
from devtools.harness.server_process import ServerProcess
from devtools.harness.waiting import wait_for
from devtools.harness.workload_follower import Follower, Record, follow

pytestmark = [pytest.mark.integration, pytest.mark.root]

CLIENT = Path(__file__).parents[2] / "devtools" / "harness" / "on_behalf_client.py"
TD = "spiffe://example.org"
# Root processes with these gids are the delegate, an unlisted caller and the broker.
GID_DELEGATE, GID_INTRUDER, GID_BROKER = 5101, 5102, 5103


def ended(record: Record) -> bool:
    return record.get("event") == "end"


def message(record: Record) -> bool:
    return record.get("event") == "message"


class Clients:
    """Starts on_behalf_client.py processes as a root process with a given gid."""

    def __init__(self) -> None:
        self.started: list[Follower] = []

    def run(self, gid: int, *args: str) -> Follower:
        python, env = python_as(None)
        argv = ["setpriv", f"--regid={gid}", "--clear-groups", *python, str(CLIENT), *args]
        follower = follow(argv, f"{args[0]}-{args[2]}-gid{gid}", env)
        self.started.append(follower)
        return follower

    def answer(self, gid: int, *args: str) -> Record:
        """The call's last record, once it has ended."""
        follower = self.run(gid, *args)
        return follower.wait_for(ended, 60, "ending the call")


@pytest.fixture
def clients() -> Iterator[Clients]:
    made = Clients()
    yield made
    for follower in made.started:
        follower.stop()


@pytest.fixture
def sleepers() -> Iterator[Callable[[int], subprocess.Popen[bytes]]]:
    """Workloads under other uids that only exist (and exit when killed)."""
    started: list[subprocess.Popen[bytes]] = []

    def start(uid: int) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen([*as_user(uid), "sleep", "600"])
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.kill()
        proc.wait()


def audits(agent: AgentProcess, **fields: Any) -> list[dict[str, Any]]:
    return [
        e
        for e in agent.log_events()
        if e.get("event") == "delegation.audit" and all(e.get(k) == v for k, v in fields.items())
    ]


def rotate_x509_authority(server: ServerProcess) -> None:
    """prepare, activate, taint the old one: every workload SVID is re-signed at once."""
    old = server.cli_json("authority", "x509", "show")
    server.cli("authority", "x509", "prepare")
    server.cli("authority", "x509", "activate")
    old_id = next(a for a in old["authorities"] if a["state"] == "active")["authority_id"]
    server.cli("authority", "x509", "taint", old_id)


def issuer(record: Record) -> str:
    return str(record["leaves"][0]["issuer_key"])


def dead_pid() -> int:
    """A pid that named a process a moment ago and names none now (reaped)."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_delegated_identity_by_pid_and_selectors_follows_rotation_and_refuses_others(
    running_server: ServerProcess,
    agent_factory: Callable[..., AgentProcess],
    clients: Clients,
    sleepers: Callable[[int], subprocess.Popen[bytes]],
) -> None:
    agent = agent_factory(authorized_delegates=[f"{TD}/delegate"])
    register(running_server, agent, "/delegate", "unix:uid:0", f"unix:gid:{GID_DELEGATE}")
    register(running_server, agent, "/intruder", "unix:uid:0", f"unix:gid:{GID_INTRUDER}")
    # A day-long SVID: only the taint, not the schedule, can rotate it during this test.
    register(
        running_server,
        agent,
        "/target-a",
        f"unix:uid:{UID_A}",
        extra=("--x509-svid-ttl", "86400"),
    )
    target = sleepers(UID_A)
    admin = str(agent.admin_socket_path)
    method = "SubscribeToX509SVIDs"

    by_pid = clients.run(GID_DELEGATE, "delegated", admin, method, "--pid", str(target.pid))
    by_selectors = clients.run(
        GID_DELEGATE, "delegated", admin, method, "--selector", f"unix:uid:{UID_A}"
    )
    first_pid = by_pid.wait_for(message, 60, "with the target's SVID")
    first_sel = by_selectors.wait_for(message, 60, "with the target's SVID")
    assert first_pid["spiffe_ids"] == [f"{TD}/target-a"]
    assert first_sel["spiffe_ids"] == [f"{TD}/target-a"]

    refused = clients.answer(GID_INTRUDER, "delegated", admin, method, "--pid", str(target.pid))
    assert refused["code"] == "PERMISSION_DENIED", refused
    both = clients.answer(
        GID_DELEGATE, "delegated", admin, method, "--pid", "1", "--selector", "unix:uid:0"
    )
    assert both["code"] == "INVALID_ARGUMENT" and "mutually exclusive" in both["details"]

    rotate_x509_authority(running_server)
    for stream, first in ((by_pid, first_pid), (by_selectors, first_sel)):
        rotated = stream.wait_for(
            lambda r, first=first: message(r) and issuer(r) != issuer(first),
            60,
            "with an SVID from the new authority",
        )
        assert rotated["spiffe_ids"] == [f"{TD}/target-a"]

    for reference in (("--selector", f"unix:uid:{UID_A}"), ("--pid", str(target.pid))):
        jwt = clients.run(GID_DELEGATE, "delegated", admin, "FetchJWTSVIDs", *reference)
        assert jwt.wait_for(ended, 60, "ending the call")["code"] == "OK"
        assert jwt.wait_for(message, 1, "with the tokens")["spiffe_ids"] == [f"{TD}/target-a"]
    bundles = clients.run(GID_DELEGATE, "delegated", admin, "SubscribeToX509Bundles")
    assert TD in bundles.wait_for(message, 60, "with the bundles")["bundles"]

    seen = len(by_selectors.records)
    target.kill()
    target.wait()
    end = by_pid.wait_for(ended, 30, "ending the stream once the target exited")
    assert end["code"] == "NOT_FOUND" and f"process {target.pid} exited" in end["details"]
    # The selectors' stream names no process: it stays open, and the agent still answers it.
    assert not any(ended(r) for r in by_selectors.records[seen:])
    assert by_selectors.proc.poll() is None

    def audited() -> bool:
        return bool(audits(agent, method=method, target=f"pid:{target.pid}", outcome="not_found"))

    wait_for(audited, 10, "the audit line of the stream that ended")
    granted = audits(agent, method=method, outcome="granted", caller_id=f"{TD}/delegate")
    assert {g["target"] for g in granted} >= {f"pid:{target.pid}", f"selectors:unix:uid:{UID_A}"}
    denied = audits(agent, method=method, outcome="permission_denied")
    assert [d["caller_id"] for d in denied] == [f"{TD}/intruder"]
    assert denied[0]["caller_uid"] == 0 and denied[0]["caller_pid"] > 0


def test_broker_api_meets_the_specs_musts(
    running_server: ServerProcess,
    agent_factory: Callable[..., AgentProcess],
    clients: Clients,
    sleepers: Callable[[int], subprocess.Popen[bytes]],
) -> None:
    broker_dir = Path(tempfile.mkdtemp(prefix="insignia-broker-"))
    broker_dir.chmod(0o755)
    socket = str(broker_dir / "broker.sock")
    agent = agent_factory(
        broker_api={"socket_path": socket, "authorized_brokers": [f"{TD}/broker"]},
    )
    register(running_server, agent, "/broker", "unix:uid:0", f"unix:gid:{GID_BROKER}")
    register(running_server, agent, "/not-a-broker", "unix:uid:0", f"unix:gid:{GID_INTRUDER}")
    register(running_server, agent, "/target-a", f"unix:uid:{UID_A}")
    register(running_server, agent, "/target-b", f"unix:uid:{UID_B}")
    a, b = sleepers(UID_A), sleepers(UID_B)
    method = "SubscribeToX509SVID"

    def call(*args: str, gid: int = GID_BROKER) -> Record:
        return clients.answer(gid, "broker", socket, *args)

    # The first message comes without any change to wait for; it holds A's identity only
    # (not B's, not the broker's own), with the bundle.
    stream_a = clients.run(GID_BROKER, "broker", socket, method, "--pid", str(a.pid))
    stream_b = clients.run(GID_BROKER, "broker", socket, method, "--pid", str(b.pid))
    assert stream_a.wait_for(message, 60, "at once")["spiffe_ids"] == [f"{TD}/target-a"]
    assert stream_b.wait_for(message, 60, "at once")["spiffe_ids"] == [f"{TD}/target-b"]
    jwt = clients.run(GID_BROKER, "broker", socket, "FetchJWTSVID", "--pid", str(b.pid))
    assert jwt.wait_for(ended, 60, "ending the call")["code"] == "OK"
    assert jwt.wait_for(message, 1, "with the token")["spiffe_ids"] == [f"{TD}/target-b"]

    # A second identity for A: A's stream gets its whole state again, B's nothing of it.
    register(running_server, agent, "/target-a-extra", f"unix:uid:{UID_A}")
    both = [f"{TD}/target-a", f"{TD}/target-a-extra"]
    stream_a.wait_for(
        lambda r: message(r) and sorted(r["spiffe_ids"]) == both, 60, "with both identities"
    )
    bundles = clients.run(
        GID_BROKER, "broker", socket, "SubscribeToJWTBundles", "--pid", str(a.pid)
    )
    assert bundles.wait_for(message, 60, "with the JWT bundles")["bundles"] == [TD]

    k8s = "type.googleapis.com/spiffe.broker.KubernetesObjectReference"
    unknown = call(method, "--pid", str(a.pid), "--type-url", k8s)
    assert unknown["code"] == "INVALID_ARGUMENT" and "not supported" in unknown["details"]
    missing_reference = call(method)
    assert missing_reference["code"] == "INVALID_ARGUMENT"
    gone = call(method, "--pid", str(dead_pid()))
    assert gone["code"] == "NOT_FOUND", gone
    no_header = call(method, "--pid", str(a.pid), "--no-header")
    assert no_header["code"] == "INVALID_ARGUMENT" and "broker.spiffe.io" in no_header["details"]
    unlisted = call(method, "--pid", str(a.pid), gid=GID_INTRUDER)
    assert unlisted["code"] == "PERMISSION_DENIED", unlisted
    not_entitled = call(method, "--pid", str(os.getpid()))  # pytest: no entry matches it
    assert not_entitled["code"] == "PERMISSION_DENIED", not_entitled

    seen = len(stream_b.records)
    a.kill()
    a.wait()
    end = stream_a.wait_for(ended, 30, "ending the stream once the workload exited")
    assert end["code"] == "NOT_FOUND" and f"process {a.pid} exited" in end["details"]
    assert bundles.wait_for(ended, 30, "ending A's bundle stream too")["code"] == "NOT_FOUND"
    assert not any(ended(r) for r in stream_b.records[seen:]) and stream_b.proc.poll() is None
    assert all(r["spiffe_ids"] == [f"{TD}/target-b"] for r in stream_b.records if message(r))

    # A pid is pinned to the process that was attested: once it execs another binary, what
    # is next sent for it is not sent; the stream ends instead.
    execs = subprocess.Popen(
        [*as_user(UID_B), "sh", "-c", "read line; exec sleep 600"], stdin=subprocess.PIPE
    )
    try:
        stream_c = clients.run(GID_BROKER, "broker", socket, method, "--pid", str(execs.pid))
        assert stream_c.wait_for(message, 60, "at once")["spiffe_ids"] == [f"{TD}/target-b"]
        sh = os.readlink(f"/proc/{execs.pid}/exe")
        assert execs.stdin is not None
        execs.stdin.write(b"go\n")
        execs.stdin.flush()
        wait_for(lambda: os.readlink(f"/proc/{execs.pid}/exe") != sh, 10, "the exec")
        register(running_server, agent, "/target-b-extra", f"unix:uid:{UID_B}")
        replaced = stream_c.wait_for(ended, 30, "ending the stream of the replaced process")
        assert replaced["code"] == "NOT_FOUND" and "exited or was replaced" in replaced["details"]
        assert [r["spiffe_ids"] for r in stream_c.records if message(r)] == [[f"{TD}/target-b"]]
        both_b = [f"{TD}/target-b", f"{TD}/target-b-extra"]
        stream_b.wait_for(
            lambda r: message(r) and sorted(r["spiffe_ids"]) == both_b, 60, "with both of B's"
        )
    finally:
        execs.kill()
        execs.wait()

    def audited() -> bool:
        return bool(audits(agent, api="broker", target=f"pid:{a.pid}", outcome="not_found"))

    wait_for(audited, 10, "the audit line of the stream that ended")
    assert audits(agent, api="broker", outcome="invalid_argument")
    refused = audits(
        agent, api="broker", outcome="permission_denied", caller_id=f"{TD}/not-a-broker"
    )
    assert len(refused) == 1
    assert audits(agent, api="broker", outcome="granted", caller_id=f"{TD}/broker")
