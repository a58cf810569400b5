"""HA push latency: an entry created through server A's admin API, until it arrives on the Sync
stream of an agent attached to server B (both servers on one PostgreSQL database, the
change crossing over LISTEN/NOTIFY). Beside it, from the same run and the same database: the
single-server figure (created through A, pushed to an agent of A) and the bare admin RTT.

Agents are synthetic: attested join-token identities holding a real Sync stream each
(tests/integration/server_agent_client.py), since 100 agent processes do not fit on a small
machine; the path measured is the server's, commit to stream.
Run: .venv/bin/python benchmarks/ha_push.py [--entries 10000] [--agents 100] [--samples 50]
(needs the tests' PostgreSQL: INSIGNIA_TEST_POSTGRES_DSN, default postgres@127.0.0.1/test)
"""

from __future__ import annotations

import argparse
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

from insignia_proto import admin_pb2  # noqa: E402

from benchmarks.server_push import Listener, attest_many, entry, load_entries, percentile  # noqa: E402
from devtools.harness.postgres import postgres_dsn, temporary_schema  # noqa: E402
from devtools.harness.server_process import ServerProcess  # noqa: E402

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--entries", type=int, default=10000)
    parser.add_argument("--agents", type=int, default=100, help="split evenly over A and B")
    parser.add_argument("--samples", type=int, default=50)
    args = parser.parse_args()
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
