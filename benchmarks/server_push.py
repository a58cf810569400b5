"""Push latency: with N entries and M connected agents, how fast does a new entry reach the
right agent's Sync stream? Also the server's RSS.

The entry is created through the admin API in-process (what `insignia-server entry create`
calls, without the CLI's own start-up), and the bare admin round trip of the same write is
printed beside it as the reference from the same run.
Run: .venv/bin/python benchmarks/server_push.py [--entries 10000] [--agents 100] [--samples 50]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

sys.path[:0] = [
    str(Path(__file__).resolve().parents[1]),
    str(Path(__file__).resolve().parents[1] / "proto"),
]

import psutil  # noqa: E402
from insignia_proto import admin_pb2, agent_pb2  # noqa: E402

from devtools.harness.agent_api_client import AttestedAgent, attest_join_token  # noqa: E402
from devtools.harness.server_process import ServerProcess  # noqa: E402


class Listener:
    """One agent's Sync stream, read in a thread; records when each entry id arrived."""

    def __init__(self, agent: AttestedAgent) -> None:
        self.agent = agent
        self.arrived: dict[str, float] = {}
        self.ready = threading.Event()
        self.changed = threading.Condition()
        self.channel = agent.channel()
        self.stream = agent.stub(self.channel).Sync(agent_pb2.SyncRequest())
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            for update in self.stream:
                now = time.perf_counter()
                with self.changed:
                    for entry in update.entries:
                        self.arrived.setdefault(entry.id, now)
                    self.changed.notify_all()
                self.ready.set()
        except Exception:
            pass

    def wait_for(self, entry_id: str, timeout: float = 30) -> float:
        with self.changed:
            if not self.changed.wait_for(lambda: entry_id in self.arrived, timeout):
                raise TimeoutError(entry_id)
            return self.arrived[entry_id]

    def close(self) -> None:
        self.stream.cancel()
        self.channel.close()


def entry(spiffe: str, parent: str) -> admin_pb2.Entry:
    return admin_pb2.Entry(spiffe_id=spiffe, parent_id=parent, selectors=["unix:uid:1000"])


def attest_many(server: ServerProcess, count: int) -> list[AttestedAgent]:
    with server.admin() as admin:
        tokens = [
            admin.CreateJoinToken(admin_pb2.CreateJoinTokenRequest()).token for _ in range(count)
        ]
    return [attest_join_token(server, t) for t in tokens]


class HasAgentId(Protocol):
    """A synthetic (AttestedAgent) or real (AgentProcess) agent: entries hang off its id."""

    @property
    def agent_id(self) -> str: ...


def load_entries(server: ServerProcess, agents: Sequence[HasAgentId], total: int) -> None:
    per_agent = max(1, total // len(agents))
    with server.admin() as admin:
        batch: list[admin_pb2.Entry] = []
        for a, agent in enumerate(agents):
            agent_id = agent.agent_id  # a real agent's reads its identity file
            for i in range(per_agent):
                batch.append(entry(f"spiffe://example.org/a{a}/w{i}", agent_id))
                if len(batch) == 1000:
                    admin.CreateEntries(admin_pb2.CreateEntriesRequest(entries=batch))
                    batch = []
        if batch:
            admin.CreateEntries(admin_pb2.CreateEntriesRequest(entries=batch))


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def rss_mib(pid: int) -> float:
    proc = psutil.Process(pid)
    return (proc.memory_info().rss + sum(c.memory_info().rss for c in proc.children())) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--entries", type=int, default=10000)
    parser.add_argument("--agents", type=int, default=100)
    parser.add_argument("--samples", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = ServerProcess(
            Path(tmp),
            extra_config={
                "agent_api": {
                    "x509_signing_rate": 1e9,
                    "jwt_signing_rate": 1e9,
                    "signing_processes": 0,
                },
                "log": {"level": "warning"},
            },
        )
        server.start()
        try:
            agents = attest_many(server, args.agents)
            load_entries(server, agents, args.entries)
            listeners = [Listener(agent) for agent in agents]
            for listener in listeners:
                listener.ready.wait(60)
            pushed, reference = [], []
            with server.admin() as admin:
                for n in range(args.samples):
                    target = random.randrange(len(agents))
                    request = admin_pb2.CreateEntriesRequest(
                        entries=[entry(f"spiffe://example.org/new{n}", agents[target].agent_id)]
                    )
                    start = time.perf_counter()
                    created = admin.CreateEntries(request).entries[0]
                    reference.append(time.perf_counter() - start)
                    pushed.append(listeners[target].wait_for(created.id) - start)
            rss = rss_mib(server.process.pid)  # type: ignore[union-attr]
            for listener in listeners:
                listener.close()
        finally:
            server.cleanup()
    ms = [v * 1000 for v in pushed]
    ref = [v * 1000 for v in reference]
    print(f"entries={args.entries} agents={args.agents} samples={args.samples}")
    print(
        f"create -> pushed to the agent : p50 {statistics.median(ms):6.1f} ms  "
        f"p99 {percentile(ms, 99):6.1f} ms  max {max(ms):6.1f} ms  (target p99 < 500 ms)"
    )
    print(
        f"reference: admin write RTT    : p50 {statistics.median(ref):6.1f} ms  "
        f"p99 {percentile(ref, 99):6.1f} ms"
    )
    print(f"server RSS (with workers)     : {rss:6.1f} MiB")


if __name__ == "__main__":
    main()
