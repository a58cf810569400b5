"""Several servers on one PostgreSQL database (issue 15, server side), with real processes:
writes through any server reach the agents of every other, CA keys are shared in the bundle
and taint/revoke act everywhere, the registry tells alive from stale servers, a dropped LISTEN
connection loses nothing, a database outage makes the server not-ready without losing writes,
and the wrong database is refused at start."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from cryptography import x509

from devtools.harness.agent_clients import UID_A, UID_B, pyspiffe, register
from devtools.harness.postgres import require_postgres, temporary_database, temporary_schema
from devtools.harness.server_process import ServerProcess
from devtools.harness.waiting import wait_for
from tests.integration.conftest import AgentFactory, ServerFactory
from tests.integration.test_instances import one_line, run_server

pytestmark = [pytest.mark.integration, pytest.mark.postgres]
FAST_REGISTRY = {"cluster": {"heartbeat_interval": "1s", "stale_after": "3s"}}


@pytest.fixture
def shared_url() -> Iterator[str]:
    """One fresh PostgreSQL schema for several servers."""
    with temporary_schema(require_postgres()) as url:
        yield url


def start_pair(server_factory: ServerFactory, url: str, **config: Any) -> list[ServerProcess]:
    return [server_factory(name=n, database={"url": url}, **config) for n in ("s1", "s2")]


def ca_count(server: ServerProcess) -> int:
    return len(x509.load_pem_x509_certificates(server.bundle_pem()))


def test_writes_through_either_server_reach_the_other_servers_agents(
    server_factory: ServerFactory, agent_factory: AgentFactory, shared_url: str
) -> None:
    s1, s2 = start_pair(server_factory, shared_url)
    a = agent_factory(server=s1, name="a")
    b = agent_factory(server=s2, name="b")
    c = agent_factory(server=s2, name="c")

    # The bundle is the union of both servers' CAs, on either server.
    wait_for(lambda: ca_count(s1) == 2 and ca_count(s2) == 2, 30, "both CAs in the bundle")

    # Entries created through server 2's admin socket reach agent a (server 1) each within a
    # poll interval or two: not on whatever server 1 happens to write next (its housekeeping
    # writes every 5 s, which used to be the only thing that woke its follower).
    for n in range(3):
        before = a.metric("insignia_agent_cached_entries") or 0
        s2.create_entry(f"spiffe://example.org/via-s2-{n}", a.agent_id, [f"unix:uid:{UID_B}"])
        wait_for(
            lambda: (a.metric("insignia_agent_cached_entries") or 0) > before,  # noqa: B023
            3,
            f"entry {n} from server 2 to reach agent a",
        )
    register(s2, a, "/via-s2", f"unix:uid:{UID_A}")
    fetched = pyspiffe(a, "x509", uid=UID_A)
    assert fetched.get("ids") == ["spiffe://example.org/via-s2"], fetched

    # An eviction through server 1 reaches agent b (server 2): it must attest again, and with
    # a used join token it stops. Agent c, on the same server, is untouched.
    s1.cli("agent", "evict", b.agent_id)
    assert b.wait_exit(60) == 1
    assert "create a new join token" in b.logs()
    assert c.ready_status() is not None and c.ready_status()[0] == 200  # type: ignore[index]


def test_taint_and_revoke_through_one_server_act_on_the_others_key(
    server_factory: ServerFactory, shared_url: str
) -> None:
    s1, s2 = start_pair(server_factory, shared_url)
    s1.cli("authority", "x509", "prepare")
    s1.cli("authority", "x509", "activate")
    wait_for(lambda: ca_count(s2) == 3, 30, "server 1's new CA in server 2's bundle")
    # Server 2 lists every server's keys with their owner, so it can taint server 1's.
    listed = s2.cli_json("authority", "x509", "show")
    assert listed["server_id"] == s2.instance_id
    owners = {a["authority_id"]: a["server_id"] for a in listed["authorities"]}
    assert sorted(owners.values()) == sorted([s1.instance_id] * 2 + [s2.instance_id]), owners
    old = next(
        a for a in listed["authorities"] if a["state"] == "old" and a["server_id"] == s1.instance_id
    )
    text = s2.cli("authority", "x509", "show").stdout
    assert f"{old['authority_id']}  old" in text and f"server {s1.instance_id}" in text, text

    s2.cli("authority", "x509", "taint", old["authority_id"])

    def tainted_on_s1() -> bool:
        shown = s1.cli_json("authority", "x509", "show")["authorities"]
        return any(a["authority_id"] == old["authority_id"] and a["tainted"] for a in shown)

    wait_for(tainted_on_s1, 30, "server 2's taint of server 1's CA to reach server 1")
    s2.cli("authority", "x509", "revoke", old["authority_id"])
    wait_for(lambda: ca_count(s1) == 2, 30, "the revoked CA to leave server 1's bundle")
    shown = s1.cli_json("authority", "x509", "show")["authorities"]
    assert old["authority_id"] not in [a["authority_id"] for a in shown]


def test_server_list_shows_alive_and_stale_servers(
    server_factory: ServerFactory, shared_url: str
) -> None:
    s1, s2 = start_pair(server_factory, shared_url, **FAST_REGISTRY)
    wait_for(lambda: len(s1.cli_json("server", "list")) == 2, 30, "both servers registered")
    listed = {s["id"]: s for s in s1.cli_json("server", "list")}
    assert set(listed) == {s1.instance_id, s2.instance_id}
    assert {s["state"] for s in listed.values()} == {"alive"}
    assert listed[s1.instance_id]["answering"] and not listed[s2.instance_id]["answering"]
    lines = s1.cli("server", "list").stdout.splitlines()
    assert len(lines) == 2 and all(" alive " in line and "last heartbeat" in line for line in lines)

    s2.stop(9)  # SIGKILL: no goodbye

    def s2_stale() -> bool:
        return {s["id"]: s["state"] for s in s1.cli_json("server", "list")}[
            s2.instance_id
        ] == "stale"

    wait_for(s2_stale, 30, "server 2 to be shown stale")
    line = next(x for x in s1.cli("server", "list").stdout.splitlines() if s2.instance_id in x)
    assert line.split()[1] == "stale"
    assert ca_count(s1) == 2  # a stale server's CA stays in the bundle until it expires


def listen_backends(dsn: str, server: ServerProcess) -> list[int]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s",
            (f"insignia-server listen {server.instance_id}",),
        ).fetchall()
    return [int(r[0]) for r in rows]


def test_a_dropped_listen_connection_loses_no_change(
    server_factory: ServerFactory, agent_factory: AgentFactory, shared_url: str
) -> None:
    dsn = require_postgres()
    s1, s2 = start_pair(server_factory, shared_url)
    a = agent_factory(server=s1, name="a")
    wait_for(lambda: len(listen_backends(dsn, s1)) == 1, 30, "server 1 to LISTEN")
    (first,) = listen_backends(dsn, s1)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(%s)", (first,))

    register(s2, a, "/after-drop", f"unix:uid:{UID_A}")  # via the poll or the new LISTEN
    wait_for(lambda: listen_backends(dsn, s1) not in ([], [first]), 30, "server 1 to LISTEN again")
    register(s2, a, "/after-reconnect", f"unix:uid:{UID_B}")
    assert pyspiffe(a, "x509", uid=UID_A).get("ids") == ["spiffe://example.org/after-drop"]


def test_losing_the_database_makes_the_server_not_ready_and_loses_no_write(
    server_factory: ServerFactory, agent_factory: AgentFactory
) -> None:
    dsn = require_postgres()
    with temporary_database(dsn) as (name, url):
        server = server_factory(name="s1", database={"url": url})
        agent = agent_factory(server=server, name="a")
        register(server, agent, "/before", f"unix:uid:{UID_A}")
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f"ALTER DATABASE {name} WITH ALLOW_CONNECTIONS false")
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                (name,),
            )
        wait_for(lambda: server.ready_status() == 503, 30, "/ready to turn not-ready")
        refused = server.cli(
            "entry",
            "create",
            "--spiffe-id",
            "spiffe://example.org/during",
            "--parent-id",
            agent.agent_id,
            "--selector",
            "unix:uid:1",
            check=False,
        )
        assert refused.returncode == 1 and "datastore is unavailable" in refused.stderr, (
            refused.stderr
        )
        # The agent's stream is served from memory: its workloads keep their SVIDs.
        assert pyspiffe(agent, "x509", uid=UID_A).get("ids") == ["spiffe://example.org/before"]
        assert server.process is not None and server.process.poll() is None

        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f"ALTER DATABASE {name} WITH ALLOW_CONNECTIONS true")
        wait_for(lambda: server.ready_status() == 200, 60, "/ready to recover")
        listed = server.cli_json("entry", "show")
        assert [e["spiffe_id"] for e in listed["entries"]] == ["spiffe://example.org/before"]
        register(server, agent, "/after", f"unix:uid:{UID_A}")


def test_a_database_of_another_trust_domain_is_refused(
    server_factory: ServerFactory, shared_url: str
) -> None:
    first = server_factory(name="s1", database={"url": shared_url})
    other = server_factory(
        name="s2", start=False, trust_domain="other.org", database={"url": shared_url}
    )
    line = one_line(run_server(other))
    assert "trust_domain: other.org differs from example.org" in line, line
    first.cli("healthcheck")


def test_a_second_server_on_the_same_sqlite_file_is_refused(
    server_factory: ServerFactory,
) -> None:
    first = server_factory(name="s1")
    url = f"sqlite:///{first.data_dir / 'datastore.sqlite3'}"
    second = server_factory(name="s2", start=False, database={"url": url})
    result: subprocess.CompletedProcess[str] = run_server(second)
    line = one_line(result)
    assert "is in use by another server" in line and "SQLite serves one server only" in line
    first.cli("healthcheck")


def test_an_active_key_revoked_through_another_server_is_replaced_at_once(
    server_factory: ServerFactory, agent_factory: AgentFactory, shared_url: str
) -> None:
    """Taint and revoke of server 1's active CA through server 2, back to back (the revoke
    usually lands before server 1 has replaced the key): server 1 is not left without a CA."""
    s1, s2 = start_pair(server_factory, shared_url)

    def active_of_s1() -> str:
        shown = s2.cli_json("authority", "x509", "show")["authorities"]
        mine = [a for a in shown if a["server_id"] == s1.instance_id and a["state"] == "active"]
        return str(mine[0]["authority_id"]) if mine else ""

    old = active_of_s1()
    s2.cli("authority", "x509", "taint", old)
    s2.cli("authority", "x509", "revoke", old)
    new = wait_for(lambda: (a := active_of_s1()) not in ("", old) and a, 30, "a new CA on s1")

    def bundle_ids() -> set[str]:
        cas = x509.load_pem_x509_certificates(s1.bundle_pem())
        return {
            c.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest.hex()
            for c in cas
        }

    wait_for(lambda: old not in bundle_ids() and new in bundle_ids(), 30, "the old CA to go")
    s1.write_bundle()  # the new agent's trust anchor: today's bundle
    agent = agent_factory(server=s1, name="after")  # s1 still attests and signs
    register(s1, agent, "/after-revoke", f"unix:uid:{UID_A}")
    fetched = pyspiffe(agent, "x509", uid=UID_A)
    assert fetched.get("ids") == ["spiffe://example.org/after-revoke"], fetched
