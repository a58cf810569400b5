"""How cost grows with the datastore: time to attest an agent and receive its full state when it
is authorized for N entries (N = 1k, 10k, 100k by default), and the server's RSS.

Every entry hangs below a node alias the agent reaches through its join token's entry, so the
whole set is authorized and sent. The reference measured in the same run is the bulk write
rate of those entries through the admin API. "attest+full state" stops at the full state's
last part; "all" at the last written entry, which may come in a later delta once the server's
change follower has applied it (that wait is the follower's lag, not the sync's cost).
Run: .venv/bin/python benchmarks/server_scaling.py [--sizes 1000,10000,100000]
    [--compare /path/to/other/checkout]   # each size again with that checkout's server
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path[:0] = [
    str(Path(__file__).resolve().parents[1]),
    str(Path(__file__).resolve().parents[1] / "proto"),
]

import psutil  # noqa: E402
from insignia_proto import admin_pb2, agent_pb2  # noqa: E402

from devtools.harness.agent_api_client import attest_join_token  # noqa: E402
from devtools.harness.server_process import ServerProcess  # noqa: E402

BATCH = 2000


@contextlib.contextmanager
def server_code(checkout: Path | None) -> Iterator[None]:
    """Servers started inside run from `checkout` (the harness keeps a PYTHONPATH it finds)."""
    before = os.environ.get("PYTHONPATH")
    if checkout is not None:
        os.environ["PYTHONPATH"] = f"{checkout}:{checkout / 'proto'}"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = before


def run(size: int, checkout: Path | None = None) -> tuple[float, float, float, float, int, float]:
    with tempfile.TemporaryDirectory() as tmp, server_code(checkout):
        server = ServerProcess(
            Path(tmp),
            extra_config={"log": {"level": "warning"}, "agent_api": {"signing_processes": 0}},
        )
        server.start()
        try:
            with server.admin() as admin:
                token = admin.CreateJoinToken(
                    admin_pb2.CreateJoinTokenRequest(spiffe_id="spiffe://example.org/node")
                ).token
                start = time.perf_counter()
                for first in range(0, size, BATCH):
                    batch = [
                        admin_pb2.Entry(
                            spiffe_id=f"spiffe://example.org/w{i}",
                            parent_id="spiffe://example.org/node",
                            selectors=[f"unix:uid:{i}"],
                        )
                        for i in range(first, min(size, first + BATCH))
                    ]
                    admin.CreateEntries(admin_pb2.CreateEntriesRequest(entries=batch), timeout=600)
                write_rate = size / (time.perf_counter() - start)
            start = time.perf_counter()
            agent = attest_join_token(server, token)
            attested = time.perf_counter() - start
            with agent.channel() as channel:
                stream = agent.stub(channel).Sync(agent_pb2.SyncRequest(), timeout=600)
                # Large states arrive in parts (agent.proto `more`); entries written just
                # before may follow in a delta once the server's change follower applied them.
                parts = [next(stream)]
                ids = {e.id for e in parts[0].entries}
                while parts[-1].more:
                    parts.append(next(stream))
                    ids.update(e.id for e in parts[-1].entries)
                full_state = time.perf_counter() - start
                while len(ids) < size + 1:
                    parts.append(next(stream))
                    ids.update(e.id for e in parts[-1].entries)
                total = time.perf_counter() - start
                stream.cancel()
            assert parts[0].full
            proc = psutil.Process(server.process.pid)  # type: ignore[union-attr]
            rss = proc.memory_info().rss / 2**20
        finally:
            server.cleanup()
    return attested, full_state, total, write_rate, sum(p.ByteSize() for p in parts), rss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--compare", type=Path, help="also run a server from this checkout")
    args = parser.parse_args()
    print(
        f"{'server':>8} {'entries':>8} {'attest':>9} {'attest+full state':>18} {'all':>8} "
        f"{'state size':>11} {'server RSS':>11} {'reference: bulk write':>22}"
    )
    checkouts = [None] if args.compare is None else [None, args.compare.resolve()]
    for size in (int(s) for s in args.sizes.split(",")):
        for checkout in checkouts:
            attested, full_state, total, write_rate, nbytes, rss = run(size, checkout)
            print(
                f"{'this' if checkout is None else 'compare':>8} {size:>8} "
                f"{attested * 1000:>7.0f}ms {full_state * 1000:>16.0f}ms {total * 1000:>6.0f}ms "
                f"{nbytes / 2**20:>9.1f}MB {rss:>9.0f}MB {write_rate:>15.0f} entries/s"
            )


if __name__ == "__main__":
    main()
