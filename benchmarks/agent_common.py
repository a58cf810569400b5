"""Shared set-up for the agent benchmarks: a real server and agent, a reference server.

`deployment()` starts `insignia-server` and `insignia-agent` as processes (the same classes
the integration tests use), registers an entry for this uid and waits until the agent holds
its SVID. `reference_server()` starts a bare grpc.aio server on a Unix socket in a separate
process, answering the Workload API paths with canned messages: the floor any Workload API
implementation in Python pays for gRPC itself.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import psutil  # type: ignore[import-untyped]

from devtools.harness.agent_process import AgentProcess
from devtools.harness.server_process import ServerProcess
from devtools.harness.waiting import wait_for

REFERENCE_SERVER = """
import asyncio, sys, grpc, grpc.aio
sys.path[:0] = [sys.argv[2], sys.argv[2] + "/proto"]
from insignia_proto import workload_pb2 as pb
svid = pb.X509SVIDResponse(svids=[pb.X509SVID(spiffe_id="spiffe://example.org/ref",
                                              x509_svid=b"x" * 600, x509_svid_key=b"k" * 138,
                                              bundle=b"b" * 500)])
jwt = pb.JWTSVIDResponse(svids=[pb.JWTSVID(spiffe_id="spiffe://example.org/ref", svid="t" * 300)])
async def x509(request, context):
    yield svid
    await asyncio.Event().wait()
async def fetch_jwt(request, context):
    return jwt
async def validate(request, context):
    return pb.ValidateJWTSVIDResponse(spiffe_id="spiffe://example.org/ref")
async def main():
    server = grpc.aio.server()
    h = grpc.method_handlers_generic_handler("SpiffeWorkloadAPI", {
        "FetchX509SVID": grpc.unary_stream_rpc_method_handler(
            x509, pb.X509SVIDRequest.FromString, pb.X509SVIDResponse.SerializeToString),
        "FetchJWTSVID": grpc.unary_unary_rpc_method_handler(
            fetch_jwt, pb.JWTSVIDRequest.FromString, pb.JWTSVIDResponse.SerializeToString),
        "ValidateJWTSVID": grpc.unary_unary_rpc_method_handler(
            validate, pb.ValidateJWTSVIDRequest.FromString,
            pb.ValidateJWTSVIDResponse.SerializeToString),
    })
    server.add_generic_rpc_handlers([h])
    server.add_insecure_port("unix:" + sys.argv[1])
    await server.start()
    print("ready", flush=True)
    await server.wait_for_termination()
asyncio.run(main())
"""

REPO = Path(__file__).resolve().parents[1]


def percentiles(samples_ms: Sequence[float]) -> tuple[float, float]:
    ordered = sorted(samples_ms)
    return statistics.median(ordered), ordered[max(0, int(len(ordered) * 0.99) - 1)]


@contextlib.contextmanager
def reference_server() -> Iterator[Path]:
    """A bare grpc.aio server in its own process; yields its socket path."""
    directory = Path(tempfile.mkdtemp(prefix="insignia-ref-"))
    path = directory / "ref.sock"
    proc = subprocess.Popen(
        [sys.executable, "-c", REFERENCE_SERVER, str(path), str(REPO)],
        stdout=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
        yield path
    finally:
        proc.terminate()
        proc.wait()


@contextlib.contextmanager
def deployment(
    workdir: Path,
    x509_ttl: int = 3600,
    agent_config: dict[str, object] | None = None,
    agent_code: Path | None = None,
) -> Iterator[tuple[ServerProcess, AgentProcess, str]]:
    """Server + agent + one entry for this uid; yields (server, agent, entry id).

    ``agent_code``: run the agent from that checkout instead (a reference, e.g. main's).
    """
    server = ServerProcess(workdir / "server", extra_config={"log": {"level": "warning"}})
    agent: AgentProcess | None = None
    try:
        server.start()
        agent = AgentProcess(
            workdir / "agent",
            server.trust_domain,
            server.host,
            server.agent_api_port,
            server.attestation_port,
            server.bundle_path,
            extra_config={"log": {"level": "warning"}, **(agent_config or {})},
            env={} if agent_code is None else {"PYTHONPATH": f"{agent_code}:{agent_code}/proto"},
        )
        agent.start(server.join_token())
        entry_id = server.create_entry(
            "spiffe://example.org/bench",
            agent.agent_id,
            [f"unix:uid:{os.getuid()}"],
            "--x509-svid-ttl",
            str(x509_ttl),
        )
        wait_for(
            lambda: (
                (agent.metric("insignia_agent_svid_rotations_total", {"reason": "missing"}) or 0)
                >= 1
            ),
            60,
            "the agent to hold the benchmark SVID",
        )
        yield server, agent, entry_id
    finally:
        if agent is not None:
            agent.close()
        server.stop()


def memory_mb(pid: int) -> tuple[float, float]:
    """(RSS, PSS) in MB. RSS counts shared library pages in full; PSS splits them."""
    info = psutil.Process(pid).memory_full_info()
    return float(info.rss) / 2**20, float(info.pss) / 2**20
