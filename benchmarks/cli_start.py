"""`insignia-server` start-up: `--version` and an `entry show` round trip beside their references.

References measured in the same run, interleaved with the figures: `python -c pass` (the
interpreter's own start) and an admin API round trip (GetEntry on a kept channel, what the
CLI's call costs once started). `--compare DIR` also runs the CLI from another checkout
(PYTHONPATH=DIR:DIR/proto, against the same server), so a before/after comes from one run.

    .venv/bin/python -m benchmarks.cli_start [--rounds 20] [--compare /path/to/other/checkout]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import grpc
from insignia_proto import admin_pb2, admin_pb2_grpc

from devtools.harness.server_process import SERVER_BIN, ServerProcess, server_env


def timed_run(argv: Sequence[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, env=env, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--compare", type=Path, help="another checkout to time the CLI from")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = ServerProcess(Path(tmp), extra_config={"log": {"level": "warning"}})
        server.start()
        try:
            entry_id = server.create_entry(
                "spiffe://example.org/web", "spiffe://example.org/insignia/agent/x", ["unix:uid:1"]
            )
            socket = ["--socket", str(server.admin_socket)]
            envs = {"this tree": server_env()}
            if args.compare is not None:
                other = args.compare.resolve()
                envs[str(other)] = {**os.environ, "PYTHONPATH": f"{other}:{other / 'proto'}"}
            channel = grpc.insecure_channel(f"unix:{server.admin_socket}")
            stub = admin_pb2_grpc.AdminAPIStub(channel)
            request = admin_pb2.GetEntryRequest(id=entry_id)
            stub.GetEntry(request, timeout=10)

            def api() -> float:
                start = time.perf_counter()
                stub.GetEntry(request, timeout=10)
                return time.perf_counter() - start

            rows: dict[str, Callable[[], float]] = {
                "python -c pass": lambda: timed_run([sys.executable, "-c", "pass"], server_env()),
                "admin API round trip (GetEntry)": api,
            }
            for name, env in envs.items():
                version = [str(SERVER_BIN), "--version"]
                show = [str(SERVER_BIN), "entry", "show", "--id", entry_id, *socket]
                rows[f"insignia-server --version ({name})"] = partial(timed_run, version, env)
                rows[f"insignia-server entry show ({name})"] = partial(timed_run, show, env)
            samples: dict[str, list[float]] = {name: [] for name in rows}
            for _ in range(args.rounds):
                for name, fn in rows.items():
                    samples[name].append(fn())
            channel.close()
        finally:
            server.cleanup()
    print(f"{args.rounds} interleaved rounds; median wall time")
    for name, values in samples.items():
        print(f"  {name:<72} {statistics.median(values) * 1000:8.1f} ms")


if __name__ == "__main__":
    main()
