"""Attack on JWT-SVID minting (issue 12 items 3 and 4): memory, then a neighbour under flood.

1. Server and agent RSS before and after 1,000 maximal requests (16 fresh audiences of 256
   bytes each) through the Workload API, 1,000 sent straight to the server's agent API, and
   200 oversize ones (one 1 MiB audience) at each boundary. Goal: neither process grows by
   more than 20 MB.
2. uid A floods FetchJWTSVID with unique audiences while uid B makes paced calls, each a
   fresh audience (a mint): B's success rate and p99. Goal: 100%.

Needs root (the workloads run as two throw-away uids). Defaults everywhere, as deployed.

    .venv/bin/python -m benchmarks.attack_jwt [--maximal 1000] [--flood-seconds 30]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import grpc
from insignia_proto import agent_pb2

from benchmarks.agent_common import memory_mb, percentiles
from devtools.harness.agent_api_client import AttestedAgent, attest_join_token
from devtools.harness.agent_clients import UID_A, UID_B, register
from devtools.harness.agent_process import AgentProcess
from devtools.harness.other_uids import python_as, read_line
from devtools.harness.server_process import ServerProcess

WORKLOAD = Path(__file__).resolve().parents[1] / "tests" / "integration" / "jwt_workload.py"
QUIET = {"log": {"level": "warning"}}


def workload_popen(agent: AgentProcess, uid: int, *args: str) -> subprocess.Popen[bytes]:
    python, env = python_as(uid)
    return subprocess.Popen(
        [*python, str(WORKLOAD), str(agent.socket_path), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
        cwd="/",
    )


def last_json(proc: subprocess.Popen[bytes], timeout: float) -> Any:
    out, _ = proc.communicate(timeout=timeout)
    return json.loads(out.decode().strip().splitlines()[-1])


def rss(server: ServerProcess, agent: AgentProcess) -> tuple[float, float]:
    assert server.process is not None and agent.process is not None
    return memory_mb(server.process.pid)[0], memory_mb(agent.process.pid)[0]


def direct_calls(agent: AttestedAgent, entry_id: str, calls: int, count: int, size: int) -> Any:
    """`calls` BatchNewJWTSVID straight to the server, each with `count` fresh audiences."""
    codes: Counter[str] = Counter()
    with agent.channel() as channel:
        stub = agent.stub(channel)
        for i in range(calls):
            audience = [f"{i:06}-{j:02}-".ljust(size, "x") for j in range(count)]
            request = agent_pb2.BatchNewJWTSVIDRequest(
                params=[agent_pb2.JWTSVIDParams(entry_id=entry_id, audience=audience)]
            )
            try:
                stub.BatchNewJWTSVID(request, timeout=30)
                codes["OK"] += 1
            except grpc.RpcError as exc:
                codes[exc.code().name] += 1
    return dict(codes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--maximal", type=int, default=1000)
    parser.add_argument("--oversize", type=int, default=200)
    parser.add_argument("--flood-seconds", type=float, default=30.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="attack-jwt-") as tmp:
        work = Path(tmp)
        work.chmod(0o755)  # the workloads (other uids) reach the agent socket below it
        server = ServerProcess(work / "server", extra_config=QUIET)
        server.start()
        agent = AgentProcess(
            work / "agent",
            server.trust_domain,
            server.host,
            server.agent_api_port,
            server.attestation_port,
            server.bundle_path,
            extra_config=QUIET,
        )
        try:
            agent.start(server.join_token())
            register(server, agent, "/attacker", f"unix:uid:{UID_A}")
            register(server, agent, "/neighbour", f"unix:uid:{UID_B}")
            report_memory(server, agent, args.maximal, args.oversize)
            report_flood(agent, args.flood_seconds)
        finally:
            agent.close()
            server.stop()


def report_memory(server: ServerProcess, agent: AgentProcess, maximal: int, oversize: int) -> None:
    fake = attest_join_token(server, server.join_token())  # an agent calling the server itself
    entry_id = server.create_entry("spiffe://example.org/direct", fake.agent_id, ["unix:uid:1"])
    # Warm both processes (first calls load code and fill fixed caches) before measuring.
    last_json(workload_popen(agent, UID_A, "paced", "20", "0.05", "16", "256"), 60)
    direct_calls(fake, entry_id, 20, 16, 256)
    readings = [("before", rss(server, agent))]
    # Paced under the default per-uid mint budget (50/s), so every call is a real mint.
    via_agent = last_json(
        workload_popen(agent, UID_A, "paced", str(maximal), "0.025", "16", "256"), 600
    )
    readings.append((f"{maximal} maximal via the Workload API", rss(server, agent)))
    refused_agent = last_json(
        workload_popen(agent, UID_A, "paced", str(oversize), "0", "1", str(1 << 20)), 600
    )
    readings.append((f"{oversize} oversize via the Workload API", rss(server, agent)))
    direct = direct_calls(fake, entry_id, maximal, 16, 256)
    readings.append((f"{maximal} maximal direct", rss(server, agent)))
    refused_direct = direct_calls(fake, entry_id, oversize, 1, 1 << 20)
    readings.append((f"{oversize} oversize direct", rss(server, agent)))
    print("== memory: maximal requests (16 audiences x 256 bytes, each one new)")
    print(f"  via the Workload API: {maximal} calls -> {via_agent['codes']}")
    print(f"  oversize (1 MiB audience) via the Workload API: {refused_agent['codes']}")
    print(f"  direct to the agent API: {maximal} calls -> {direct}")
    print(f"  oversize (1 MiB audience) direct: {refused_direct}")
    print(f"  {'RSS MB after':<40}{'server':>10}{'agent':>10}")
    for name, (server_mb, agent_mb) in readings:
        print(f"  {name:<40}{server_mb:10.1f}{agent_mb:10.1f}")
    (_, first), (_, last) = readings[0], readings[-1]
    print(f"  {'growth':<40}{last[0] - first[0]:10.1f}{last[1] - first[1]:10.1f}")


def report_flood(agent: AgentProcess, seconds: float) -> None:
    calls = int(seconds / 0.05)
    flood = workload_popen(agent, UID_A, "flood", str(seconds + 60), "8", "1", "64")
    assert flood.stdout is not None and flood.stdin is not None
    read_line(flood.stdout, 60, "the flood")
    neighbour = last_json(workload_popen(agent, UID_B, "paced", str(calls), "0.05"), seconds + 120)
    flood.stdin.close()
    flooded = json.loads(read_line(flood.stdout, 60, "the flood's counts"))
    flood.wait(60)
    codes = neighbour["codes"]
    ok = codes.get("OK", 0)
    p50, p99 = percentiles(neighbour["latencies_ms"])
    print("== flood: uid A, 8 concurrent callers, a new audience per call")
    print(f"  attacker: {flooded['calls']} calls -> {flooded['codes']}")
    print(f"  attacker refusal: {flooded['details'].get('RESOURCE_EXHAUSTED', '-')}")
    print(
        f"  neighbour (uid B, 20 mints/s): {ok}/{sum(codes.values())} OK "
        f"({100 * ok / max(1, sum(codes.values())):.1f}%), p50 {p50:.1f} ms, p99 {p99:.1f} ms"
    )
    for detail in neighbour["details"]:
        print(f"  neighbour error: {detail}")


if __name__ == "__main__":
    main()
