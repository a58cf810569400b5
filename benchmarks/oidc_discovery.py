"""OIDC discovery: what one relying party's requests cost on the server's listener.

Sequential GETs over one keep-alive connection to `/keys` and to the discovery document, with
GET `/live` on the same server's health listener (the same HTTP stack, the cheapest route) as
the reference measured in the same run: the difference is what the documents themselves cost
once built (they are rebuilt only when the bundle changes).
Run: .venv/bin/python benchmarks/oidc_discovery.py [--requests 2000]
"""

from __future__ import annotations

import argparse
import http.client
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path[:0] = [
    str(Path(__file__).resolve().parents[1]),
    str(Path(__file__).resolve().parents[1] / "proto"),
]

from devtools.harness.ports import free_port  # noqa: E402
from devtools.harness.server_process import ServerProcess  # noqa: E402


def measure(host: str, port: int, path: str, count: int) -> tuple[float, float]:
    """(requests per second, median latency in ms) of `count` GETs on one connection."""
    conn = http.client.HTTPConnection(host, port, timeout=10)
    latencies = []
    try:
        started = time.perf_counter()
        for _ in range(count):
            begin = time.perf_counter()
            conn.request("GET", path)
            answer = conn.getresponse()
            answer.read()
            if answer.status != 200:
                raise RuntimeError(f"GET {path}: {answer.status}")
            latencies.append(time.perf_counter() - begin)
        elapsed = time.perf_counter() - started
    finally:
        conn.close()
    return count / elapsed, statistics.median(latencies) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="insignia-bench-oidc-") as workdir:
        server = ServerProcess(
            Path(workdir),
            extra_config={
                "jwt_issuer": f"http://127.0.0.1:{port}",
                "oidc_discovery": {"address": f"127.0.0.1:{port}"},
                "log": {"level": "warning"},
            },
        )
        server.start()
        try:
            health_host, health_port = server.health_address.rsplit(":", 1)
            routes = [
                ("/keys", "127.0.0.1", port),
                ("/.well-known/openid-configuration", "127.0.0.1", port),
                ("/live (reference)", health_host, int(health_port)),
            ]
            for label, host, target in routes:
                path = label.split()[0]
                measure(host, target, path, min(200, args.requests))  # warm-up
                rate, median = measure(host, target, path, args.requests)
                print(f"{label:36} {rate:8.0f} requests/s   median {median:.3f} ms")
        finally:
            server.cleanup()


if __name__ == "__main__":
    main()
