"""HA push latency: an entry created through server A's admin API, until it arrives on the Sync
stream of an agent attached to server B (both servers on one PostgreSQL database, the
change crossing over LISTEN/NOTIFY). Beside it, from the same run and the same database: the
single-server figure (created through A, pushed to an agent of A) and the bare admin RTT.

By default agents are synthetic: attested join-token identities holding a real Sync stream
each (tests/integration/server_agent_client.py), since 100 agent processes do not fit on a
small machine; the path measured is the server's, commit to stream.

`--real-agents` runs real `insignia-agent` processes instead (half attested on A, half on
B, the entries spread over all of them), and measures the whole path a workload sees:
commit on A until a workload on an agent of B receives the new SVID on its FetchX509SVID
stream (devtools/harness/multinode_workload.py, its own process, stamping each message with
the host's monotonic clock). Beside it, same run: the same to a workload on an agent of A.
Each sample creates one entry for the workload's uid, waits, deletes it and waits for the
identity to go, on the next watched agent in turn (`--watched` per server).

Run: .venv/bin/python benchmarks/ha_push.py [--entries 10000] [--agents 100] [--samples 50]
     .venv/bin/python benchmarks/ha_push.py --real-agents [--agents 20] [--watched 3]
(needs the tests' PostgreSQL: INSIGNIA_TEST_POSTGRES_DSN, default postgres@127.0.0.1/test)
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path[:0] = [
    str(Path(__file__).resolve().parents[1]),
    str(Path(__file__).resolve().parents[1] / "proto"),
]

from insignia_proto import admin_pb2, admin_pb2_grpc  # noqa: E402

from benchmarks.server_push import Listener, attest_many, entry, load_entries, percentile  # noqa: E402
from devtools.harness.agent_process import AgentProcess  # noqa: E402
from devtools.harness.postgres import postgres_dsn, temporary_schema  # noqa: E402
from devtools.harness.server_process import ServerProcess  # noqa: E402
from devtools.harness.workload_follower import Follower, follow, workload_argv  # noqa: E402

SERVER_CONFIG = {
    "agent_api": {"x509_signing_rate": 1e9, "jwt_signing_rate": 1e9, "signing_processes": 0},
    "log": {"level": "warning"},
}


def summary(name: str, seconds: list[float]) -> str:
    ms = [v * 1000 for v in seconds]
    return (
        f"{name:38s}: p50 {statistics.median(ms):6.1f} ms  p99 {percentile(ms, 99):6.1f} ms  "
        f"max {max(ms):6.1f} ms"
    )


QUIET = {"log": {"level": "warning"}}
TIMEOUT = 60.0


def start_agents(server: ServerProcess, workdir: Path, count: int) -> list[AgentProcess]:
    """`count` real agents attested on `server` (each with its own join token), all ready."""
    agents = [
        AgentProcess(
            workdir / f"agent{i}",
            server.trust_domain,
            server.host,
            server.agent_api_port,
            server.attestation_port,
            server.bundle_path,
            extra_config=QUIET,
        )
        for i in range(count)
    ]
    for agent in agents:
        agent.start(server.join_token(), wait=False)
    for agent in agents:
        agent.wait_ready()
    return agents


class Watched:
    """A workload on one agent, holding one SVID, its FetchX509SVID stream followed."""

    def __init__(self, admin: admin_pb2_grpc.AdminAPIStub, agent: AgentProcess, name: str) -> None:
        self.admin = admin
        self.agent_id = agent.agent_id
        self.name = name
        self.selector = f"unix:uid:{os.getuid()}"
        self.create(f"spiffe://example.org/hold/{name}")
        self.follower: Follower = follow(workload_argv(agent.socket_path, "watch"), name)
        self.follower.wait_for(lambda r: bool(r.get("ids")), TIMEOUT, "its first SVID")

    def create(self, spiffe_id: str) -> str:
        request = admin_pb2.CreateEntriesRequest(
            entries=[
                admin_pb2.Entry(
                    spiffe_id=spiffe_id, parent_id=self.agent_id, selectors=[self.selector]
                )
            ]
        )
        return str(self.admin.CreateEntries(request, timeout=TIMEOUT).entries[0].id)

    def sample(self, spiffe_id: str) -> float:
        """Seconds from the create call on A to the workload's stream carrying `spiffe_id`;
        then the entry is deleted again and its identity waited out."""
        mark = len(self.follower.records)
        start = time.monotonic()
        entry_id = self.create(spiffe_id)
        record = self.follower.wait_for(
            lambda r: spiffe_id in r.get("ids", ()), TIMEOUT, f"with {spiffe_id}", mark
        )
        mark = self.follower.records.index(record) + 1
        self.admin.DeleteEntry(admin_pb2.DeleteEntryRequest(id=entry_id), timeout=TIMEOUT)
        self.follower.wait_for(
            lambda r: "ids" in r and spiffe_id not in r["ids"], TIMEOUT, "without it", mark
        )
        return float(record["t"]) - start


def real_agents(args: argparse.Namespace) -> None:
    with (
        tempfile.TemporaryDirectory() as tmp,
        temporary_schema(postgres_dsn()) as url,
        contextlib.ExitStack() as stack,
    ):
        work = Path(tmp)
        a = ServerProcess(work / "a", database_url=url, extra_config=SERVER_CONFIG)
        b = ServerProcess(work / "b", database_url=url, extra_config=SERVER_CONFIG)
        stack.callback(a.cleanup)
        stack.callback(b.cleanup)
        a.start()
        b.start()
        half = max(1, args.agents // 2)
        on_a = start_agents(a, work / "on-a", half)
        for agent in on_a:
            stack.callback(agent.close)
        on_b = start_agents(b, work / "on-b", max(1, args.agents - half))
        for agent in on_b:
            stack.callback(agent.close)
        load_entries(a, [*on_a, *on_b], args.entries)
        admin = stack.enter_context(a.admin())
        cross_w = [Watched(admin, g, f"b{i}") for i, g in enumerate(on_b[: args.watched])]
        local_w = [Watched(admin, g, f"a{i}") for i, g in enumerate(on_a[: args.watched])]
        for w in cross_w + local_w:
            stack.callback(w.follower.stop)
        cross, local = [], []
        for n in range(args.samples):
            cross.append(cross_w[n % len(cross_w)].sample(f"spiffe://example.org/x/b{n}"))
            local.append(local_w[n % len(local_w)].sample(f"spiffe://example.org/x/a{n}"))
    print(
        f"entries={args.entries} agents={args.agents} (real agent processes, half on each "
        f"server; workloads watched on {len(cross_w)} + {len(local_w)}) samples={args.samples}"
    )
    print(summary("create on A -> workload on agent of B", cross) + "  (goal p99 < 250 ms)")
    print(summary("reference: create on A -> workload on A", local))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--entries", type=int, default=10000)
    parser.add_argument("--agents", type=int, default=100, help="split evenly over A and B")
    parser.add_argument("--samples", type=int, default=50)
    parser.add_argument("--real-agents", action="store_true", help="agent processes, workloads")
    parser.add_argument("--watched", type=int, default=3, help="--real-agents: per server")
    args = parser.parse_args()
    if args.real_agents:
        real_agents(args)
        return
    with tempfile.TemporaryDirectory() as tmp, temporary_schema(postgres_dsn()) as url:
        a = ServerProcess(Path(tmp) / "a", database_url=url, extra_config=SERVER_CONFIG)
        b = ServerProcess(Path(tmp) / "b", database_url=url, extra_config=SERVER_CONFIG)
        try:
            a.start()
            b.start()  # after A: B's bootstrap bundle already holds both CAs
            half = max(1, args.agents // 2)
            on_a, on_b = attest_many(a, half), attest_many(b, max(1, args.agents - half))
            load_entries(a, on_a + on_b, args.entries)
            listeners_a = [Listener(agent) for agent in on_a]
            listeners_b = [Listener(agent) for agent in on_b]
            for listener in listeners_a + listeners_b:
                listener.ready.wait(60)
            cross, local, rtt = [], [], []
            with a.admin() as admin:
                for n in range(args.samples):
                    for name, agents, listeners, out in (
                        ("b", on_b, listeners_b, cross),
                        ("a", on_a, listeners_a, local),
                    ):
                        target = random.randrange(len(agents))
                        request = admin_pb2.CreateEntriesRequest(
                            entries=[
                                entry(f"spiffe://example.org/{name}{n}", agents[target].agent_id)
                            ]
                        )
                        start = time.perf_counter()
                        created = admin.CreateEntries(request).entries[0]
                        rtt.append(time.perf_counter() - start)
                        out.append(listeners[target].wait_for(created.id) - start)
            for listener in listeners_a + listeners_b:
                listener.close()
        finally:
            a.cleanup()
            b.cleanup()
    print(
        f"entries={args.entries} agents={args.agents} (synthetic Sync streams, half on each "
        f"server) samples={args.samples}"
    )
    print(summary("create on A -> agent of B (HA)", cross) + "  (goal p99 < 250 ms)")
    print(summary("reference: create on A -> agent of A", local))
    print(summary("reference: admin write RTT on A", rtt))


if __name__ == "__main__":
    main()
