"""End to end: registration to SVID, and CA rotation to re-signed SVIDs on three agents.

One server and three agents run as real processes on loopback. On each agent a workload
(devtools/harness/multinode_workload.py, Insignia's SDK in its own process) holds a
FetchX509SVID stream open and stamps every message it receives with time.monotonic(), one
clock for all processes on the host. Figures:

- `entry create` -> the workload's stream carries the new identity (p50, p99 over --entries).
  The workload holds one SVID already; each sample creates one more entry for its uid,
  waits, then deletes it and waits for the identity to go, so every sample sees the same
  two-SVID message. Measured through the admin API on a kept channel (the system's own
  latency) and through the `insignia-server entry create` CLI (what an operator sees,
  process start included).
- `authority x509 prepare` -> the new CA in every workload's bundle; `activate` it, then
  `taint` of the old CA -> every SVID on all three agents re-signed by the new one (each
  workload holds --svids-per-agent SVIDs).

References measured in the same run: an admin API round trip (GetEntry, kept channel) and a
bare CLI round trip (`entry show`, `authority x509 show`).

    .venv/bin/python -m benchmarks.e2e_latency [--entries 100] [--cli-entries 20]
        [--rotations 3] [--svids-per-agent 10]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import grpc
from insignia_proto import admin_pb2, admin_pb2_grpc

from benchmarks.agent_common import percentiles
from devtools.harness.agent_process import AgentProcess
from devtools.harness.server_process import SERVER_BIN, ServerProcess, server_env
from devtools.harness.workload_follower import Record, follow, workload_argv

TRUST_DOMAIN = "example.org"
QUIET = {"log": {"level": "warning"}}
TIMEOUT = 60.0


@contextlib.contextmanager
def deployment(workdir: Path, agents: int) -> Iterator[tuple[ServerProcess, list[AgentProcess]]]:
    """A server and `agents` agents, each attested with its own join token."""
    server = ServerProcess(workdir / "server", TRUST_DOMAIN, extra_config=QUIET)
    started: list[AgentProcess] = []
    try:
        server.start()
        for i in range(agents):
            agent = AgentProcess(
                workdir / f"agent{i}",
                TRUST_DOMAIN,
                server.host,
                server.agent_api_port,
                server.attestation_port,
                server.bundle_path,
                extra_config=QUIET,
            )
            started.append(agent)
            agent.start(server.join_token(), wait=False)
        for agent in started:
            agent.wait_ready()
        yield server, started
    finally:
        for agent in started:
            agent.close()
        server.stop()


def ms_since(start: float, record: Record) -> float:
    return (float(record["t"]) - start) * 1000


def has_id(spiffe_id: str) -> Callable[[Record], bool]:
    return lambda r: spiffe_id in r.get("ids", ())


def lacks_id(spiffe_id: str) -> Callable[[Record], bool]:
    return lambda r: "ids" in r and spiffe_id not in r["ids"]


class Bench:
    def __init__(self, server: ServerProcess, agents: list[AgentProcess]) -> None:
        """One watching workload per agent, holding one SVID."""
        self.server = server
        self.agent_ids = [a.agent_id for a in agents]
        self.selector = f"unix:uid:{os.getuid()}"
        self.channel = grpc.insecure_channel(f"unix:{server.admin_socket}")
        self.admin = admin_pb2_grpc.AdminAPIStub(self.channel)
        self.watchers = [
            follow(workload_argv(agent.socket_path, "watch"), f"workload on agent{i}")
            for i, agent in enumerate(agents)
        ]
        self.held = 0
        self.hold_svids(1)

    def hold_svids(self, count: int) -> None:
        """Give every watching workload `count` SVIDs (one entry each) and wait until it has."""
        for i, agent_id in enumerate(self.agent_ids):
            for j in range(self.held, count):
                self.create(f"spiffe://{TRUST_DOMAIN}/bench/workload{i}/svid{j}", agent_id)
        self.held = count
        for watcher in self.watchers:
            watcher.wait_for(lambda r: len(r.get("ids", ())) == count, TIMEOUT, "with all")

    def close(self) -> None:
        for watcher in self.watchers:
            watcher.stop()
        self.channel.close()

    def create(self, spiffe_id: str, parent_id: str) -> str:
        entry = admin_pb2.Entry(spiffe_id=spiffe_id, parent_id=parent_id, selectors=[self.selector])
        request = admin_pb2.CreateEntriesRequest(entries=[entry])
        response = self.admin.CreateEntries(request, timeout=TIMEOUT)
        return str(response.entries[0].id)

    def delete(self, entry_id: str) -> None:
        self.admin.DeleteEntry(admin_pb2.DeleteEntryRequest(id=entry_id), timeout=TIMEOUT)

    def cli(self, *args: str) -> str:
        result = subprocess.run(
            [str(SERVER_BIN), *args, "--socket", str(self.server.admin_socket)],
            capture_output=True,
            text=True,
            env=server_env(),
            timeout=TIMEOUT,
            check=True,
        )
        return result.stdout

    # --- entry create -> first SVID ------------------------------------------------------------

    def entry_to_svid(self, samples: int, via_cli: bool) -> tuple[list[float], list[float]]:
        """(create -> identity arrives, delete -> identity gone) in ms, one entry at a time."""
        watcher, parent = self.watchers[0], self.agent_ids[0]
        created, deleted = [], []
        for i in range(samples):
            spiffe_id = f"spiffe://{TRUST_DOMAIN}/bench/{'cli' if via_cli else 'api'}/e{i}"
            index = len(watcher.records)
            start = time.monotonic()
            if via_cli:
                args = ["entry", "create", "--spiffe-id", spiffe_id, "--parent-id", parent]
                entry_id = self.cli(*args, "--selector", self.selector).strip()
            else:
                entry_id = self.create(spiffe_id, parent)
            record = watcher.wait_for(has_id(spiffe_id), TIMEOUT, f"with {spiffe_id}", index)
            created.append(ms_since(start, record))
            index = watcher.records.index(record) + 1
            start = time.monotonic()
            self.delete(entry_id)
            record = watcher.wait_for(lacks_id(spiffe_id), TIMEOUT, f"without {spiffe_id}", index)
            deleted.append(ms_since(start, record))
        return created, deleted

    def reference_api(self, samples: int) -> list[float]:
        entry_id = self.create(f"spiffe://{TRUST_DOMAIN}/bench/reference", self.agent_ids[0])
        out = []
        for _ in range(samples):
            start = time.monotonic()
            self.admin.GetEntry(admin_pb2.GetEntryRequest(id=entry_id), timeout=TIMEOUT)
            out.append((time.monotonic() - start) * 1000)
        self.delete(entry_id)
        return out

    def reference_cli(self, samples: int, *args: str) -> list[float]:
        out = []
        for _ in range(samples):
            start = time.monotonic()
            self.cli(*args)
            out.append((time.monotonic() - start) * 1000)
        return out

    # --- CA rotation -> every workload ----------------------------------------------------------

    def wait_all(
        self, marks: Sequence[int], start: float, done: Callable[[Record], bool], what: str
    ) -> float:
        """ms from `start` until every watcher, past its mark, has a record satisfying `done`."""
        return max(
            ms_since(start, watcher.wait_for(done, TIMEOUT, what, mark))
            for watcher, mark in zip(self.watchers, marks, strict=True)
        )

    def rotate(self) -> tuple[float, float]:
        """prepare -> activate -> taint the old CA: (prepare ms, taint ms), via the admin API."""
        x509 = admin_pb2.X509
        listed = self.admin.ListAuthorities(admin_pb2.AuthorityRequest(kind=x509), timeout=TIMEOUT)
        old = next(a.authority_id for a in listed.authorities if a.state == "active")
        marks = [len(w.records) for w in self.watchers]
        start = time.monotonic()
        request = admin_pb2.AuthorityRequest(kind=x509)
        new = self.admin.PrepareAuthority(request, timeout=TIMEOUT).authority_id
        prepare_ms = self.wait_all(marks, start, lambda r: new in r.get("bundle", ()), "with it")
        request = admin_pb2.AuthorityRequest(kind=x509, authority_id=new)
        self.admin.ActivateAuthority(request, timeout=TIMEOUT)
        if any(old not in w.last()["authorities"] for w in self.watchers):
            raise RuntimeError(f"a workload lost its SVIDs from {old} before the taint")
        marks = [len(w.records) for w in self.watchers]
        start = time.monotonic()
        request = admin_pb2.AuthorityRequest(kind=x509, authority_id=old)
        self.admin.TaintAuthority(request, timeout=TIMEOUT)
        taint_ms = self.wait_all(
            marks, start, lambda r: set(r.get("authorities", ())) == {new}, "all re-signed"
        )
        return prepare_ms, taint_ms


def row(label: str, samples: Sequence[float]) -> str:
    p50, p99 = percentiles(samples)
    return f"{label:62}{len(samples):>6}{p50:10.1f}{p99:10.1f}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--entries", type=int, default=100)
    parser.add_argument("--cli-entries", type=int, default=20)
    parser.add_argument("--rotations", type=int, default=3)
    parser.add_argument("--svids-per-agent", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, deployment(Path(tmp), 3) as (server, agents):
        bench = Bench(server, agents)
        try:
            api_created, api_deleted = bench.entry_to_svid(args.entries, via_cli=False)
            cli_created, _ = bench.entry_to_svid(args.cli_entries, via_cli=True)
            ref_api = bench.reference_api(args.entries)
            ref_show = bench.reference_cli(args.cli_entries, "entry", "show", "--json")
            ref_auth = bench.reference_cli(args.cli_entries, "authority", "x509", "show")
            bench.hold_svids(args.svids_per_agent)
            rotations = [bench.rotate() for _ in range(args.rotations)]
        finally:
            bench.close()
    print(f"{'end to end, ms':62}{'n':>6}{'p50':>10}{'p99':>10}")
    print(row("entry create (admin API) -> workload holds the new SVID", api_created))
    print(row("entry delete (admin API) -> identity withdrawn from workload", api_deleted))
    print(row("  reference: admin API round trip (GetEntry, kept channel)", ref_api))
    print(row("entry create (CLI) -> workload holds the new SVID", cli_created))
    print(row("  reference: bare CLI round trip (entry show)", ref_show))
    print(row("  reference: bare CLI round trip (authority x509 show)", ref_auth))
    print(
        f"\nCA rotation: 3 agents, {3 * args.svids_per_agent} SVIDs; "
        f"ms for each of {args.rotations} rounds"
    )
    print(
        "  authority x509 prepare (admin API) -> new CA in every workload's bundle: "
        + ", ".join(f"{r[0]:.0f}" for r in rotations)
    )
    print(
        "  authority x509 taint (admin API) -> every SVID re-signed by the new CA:  "
        + ", ".join(f"{r[1]:.0f}" for r in rotations)
    )
    print(f"({os.cpu_count()} CPUs)")


if __name__ == "__main__":
    main()
