"""Failover: SIGKILL an agent's server; how long until the agent syncs on another server, and
the longest time a workload went without a valid X.509-SVID (goal: 0 beyond the sampling).
With --freeze the server is SIGSTOPped instead: it closes nothing, so the agent has only the
missing Sync heartbeats to go by (the server's `sync_heartbeat_interval`, 2 s by default).

Two servers share one PostgreSQL database (INSIGNIA_TEST_POSTGRES_DSN, default the local test
one); the agent lists both in `[server] addresses`. A workload thread fetches its SVID every
100 ms throughout. The reference, measured in the same run: the same agent listing only one
server, that server SIGKILLed and started again at once; the agent waits for its return.
Run: .venv/bin/python benchmarks/failover.py [--rounds 3] [--moves 4] [--freeze]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path[:0] = [
    str(Path(__file__).resolve().parents[1]),
    str(Path(__file__).resolve().parents[1] / "proto"),
]

from devtools.harness.agent_process import AgentProcess, merge  # noqa: E402
from devtools.harness.postgres import postgres_dsn, temporary_schema  # noqa: E402
from devtools.harness.server_process import ServerProcess  # noqa: E402
from devtools.harness.svid_sampler import Sampler  # noqa: E402
from devtools.harness.waiting import wait_for  # noqa: E402

QUIET = {"log": {"level": "warning"}}


def agent_api(server: ServerProcess) -> str:
    return f"{server.host}:{server.agent_api_port}"


def pin_ports(server: ServerProcess) -> None:
    ports = {"port": server.agent_api_port, "attestation_port": server.attestation_port}
    server.extra_config = merge(dict(server.extra_config), {"agent_api": ports})
    server.write_config()


def attachments(agent: AgentProcess, server: ServerProcess) -> int:
    """How many times the agent's sync stream has attached to `server` (its log says)."""
    address = agent_api(server)
    return sum(
        1
        for e in agent.log_events()
        if e.get("event") == "sync.attached" and e.get("server") == address
    )


def fail(server: ServerProcess, freeze: bool) -> float:
    """SIGKILL `server` (and reap it), or SIGSTOP it; when that happened."""
    assert server.process is not None
    failed_at = time.monotonic()
    if freeze:
        server.process.send_signal(signal.SIGSTOP)
    else:
        server.stop(signal.SIGKILL)
    return failed_at


def time_to_attach(
    agent: AgentProcess,
    killed: ServerProcess,
    target: ServerProcess,
    between: Callable[[], None],
    freeze: bool = False,
) -> float:
    """Fail `killed`, run `between`, and time until the agent attached to `target`. The
    attachments are counted before the failure: the move may be over before it returns."""
    before = attachments(agent, target)
    killed_at = fail(killed, freeze)
    between()
    try:
        wait_for(lambda: attachments(agent, target) > before, 60, "the agent to attach")
    except TimeoutError as exc:
        raise SystemExit(f"{exc}\n{agent.log_tail()}") from None
    return time.monotonic() - killed_at


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="reference kill-and-restarts")
    # Every move after the first returns to a restarted server: its TLS roots must hold the
    # other server's CA (the union bundle).
    parser.add_argument("--moves", type=int, default=4, help="failovers, alternating servers")
    parser.add_argument("--freeze", action="store_true", help="SIGSTOP the server, not SIGKILL")
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="insignia-failover-") as tmp,
        temporary_schema(postgres_dsn()) as url,
    ):
        work = Path(tmp)
        shared = merge(QUIET, {"database": {"url": url}})
        first = ServerProcess(work / "s1", extra_config=shared)
        second = ServerProcess(work / "s2", extra_config=shared)
        agent: AgentProcess | None = None
        try:
            for server in (first, second):  # both on the database from the start
                server.start()
                pin_ports(server)
            agent = AgentProcess(
                work / "agent",
                first.trust_domain,
                first.host,
                first.agent_api_port,
                first.attestation_port,
                first.bundle_path,
                extra_config=merge(QUIET, {"log": {"level": "info"}}),
            )
            agent.start(first.join_token())
            first.create_entry(
                "spiffe://example.org/bench", agent.agent_id, [f"unix:uid:{os.getuid()}"]
            )
            wait_for(lambda: (agent.metric("insignia_agent_cached_entries") or 0) >= 1, 30, "entry")

            # Reference: one server, killed and started again at once; the agent waits for it.
            reference = []
            with Sampler(agent.socket_path) as ref_sampler:
                for _ in range(args.rounds):
                    wait_for(lambda: ref_sampler.samples >= 5, 10, "samples")
                    reference.append(time_to_attach(agent, first, first, first.start))

            agent.stop()
            agent.extra_config = merge(
                dict(agent.extra_config),
                {"server": {"addresses": [agent_api(first), agent_api(second)]}},
            )
            agent.write_config()
            agent.start()

            moves = []
            with Sampler(agent.socket_path) as sampler:
                current, other = first, second
                for _ in range(args.moves):
                    wait_for(lambda: sampler.samples >= 5, 10, "samples")
                    moves.append(time_to_attach(agent, current, other, lambda: None, args.freeze))
                    current.stop(signal.SIGKILL)  # a frozen one too: it is restarted
                    current.start()  # back for the next move, which kills the other one
                    current, other = other, current
        finally:
            if agent is not None:
                agent.close()
            first.stop()
            second.stop()
    print(f"{'':44} {'median':>8} {'max':>8}")
    print(
        f"{('freeze' if args.freeze else 'kill') + ' -> sync on the other server (s)':44} "
        f"{statistics.median(moves):8.2f} {max(moves):8.2f}"
    )
    print(
        f"{'reference: kill -> same server back (s)':44} "
        f"{statistics.median(reference):8.2f} {max(reference):8.2f}"
    )
    print(
        f"longest time without a valid SVID: {sampler.longest_gap * 1000:.0f} ms "
        f"(sampling every 100 ms; reference run {ref_sampler.longest_gap * 1000:.0f} ms); "
        f"failed samples {len(sampler.failures)} of {sampler.samples} "
        f"(reference {len(ref_sampler.failures)} of {ref_sampler.samples})"
    )


if __name__ == "__main__":
    main()
