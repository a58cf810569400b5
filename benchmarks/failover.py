"""Failover: SIGKILL an agent's server; how long until the agent syncs on another server, and
the longest time a workload went without a valid X.509-SVID (goal: 0 beyond the sampling).

Two servers share one PostgreSQL database (INSIGNIA_TEST_POSTGRES_DSN, default the local test
one); the agent lists both in `[server] addresses`. A workload thread fetches its SVID every
100 ms throughout. The reference, measured in the same run: the same agent listing only one
server, that server SIGKILLed and started again at once; the agent waits for its return.
Run: .venv/bin/python benchmarks/failover.py [--rounds 3] [--moves 1]
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


def kill(server: ServerProcess) -> float:
    assert server.process is not None
    killed_at = time.monotonic()
    server.process.send_signal(signal.SIGKILL)
    server.process.wait(10)
    server.process = None
    return killed_at


def time_to_attach(
    agent: AgentProcess, target: ServerProcess, killed_at: float, between: Callable[[], None]
) -> float:
    before = attachments(agent, target)
    between()
    try:
        wait_for(lambda: attachments(agent, target) > before, 60, "the agent to attach")
    except TimeoutError as exc:
        raise SystemExit(f"{exc}\n{agent.log_tail()}") from None
    return time.monotonic() - killed_at


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="reference kill-and-restarts")
    # Moves back to the first server need every server's keys in the bundle (the server half
    # of issue 15); until it is merged, keep the default of one move.
    parser.add_argument("--moves", type=int, default=1, help="failovers, alternating servers")
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
            first.start()
            pin_ports(first)
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
                    killed_at = kill(first)
                    reference.append(time_to_attach(agent, first, killed_at, first.start))

            # The second server reads the agent and its entry at start (until servers share
            # changes and the bundle's union of keys, the server half of issue 15).
            second.start()
            pin_ports(second)
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
                    killed_at = kill(current)
                    moves.append(time_to_attach(agent, other, killed_at, lambda: None))
                    current.start()  # back for the next move, which kills the other one
                    current, other = other, current
        finally:
            if agent is not None:
                agent.close()
            first.stop()
            second.stop()
    print(f"{'':44} {'median':>8} {'max':>8}")
    print(
        f"{'kill -> sync on the other server (s)':44} "
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
