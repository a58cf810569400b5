"""Datastore and entry authorization at scale, beside references measured in the same run.

    .venv/bin/python -m benchmarks.server_datastore [--entries 100000] [--agents 100]
        [--postgres postgresql://postgres@127.0.0.1:5432/test]

Rows (ours | reference | ratio):
- batch create: validated entries stored through `Datastore.create_entries` | the same rows
  written with raw driver executemany (no validation, no change log).
- snapshot: `Datastore.entries_snapshot()` into typed entries | raw fetch of the same rows.
- authorize: `EntryIndex.authorized_entries` per agent | one linear scan of all entries for
  that agent's direct children (what an index-free server would pay at the least).
- affected agents per change (with `EntryIndex.affected_agents`) | the same linear scan.
This is a measurement, never a test.
"""

from __future__ import annotations

import argparse
import secrets
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from functools import partial
from pathlib import Path

import psycopg

from insignia.selectors import Selector
from insignia.server.agentapi.authorization import EntryChange, EntryIndex
from insignia.server.datastore import Datastore
from insignia.server.entries import EntryLimits, RegistrationEntry, server_spiffe_id, validate_entry
from insignia.spiffeid import SpiffeId, TrustDomain

TD = TrustDomain("example.org")
LIMITS = EntryLimits(TD, 86400, 3600)
BATCH = 5000


def make_entries(count: int, agents: int, tag: str) -> list[RegistrationEntry]:
    """Per agent: direct entries, one nested level below them, and a few node aliases."""
    made = []
    for i in range(count):
        agent = i % agents
        if i % 10 == 9:  # nested: parented to the previous entry's ID
            parent = f"spiffe://example.org/{tag}/w/{i - 1}"
        elif i % 100 == 50:
            parent = str(server_spiffe_id(TD))
        else:
            parent = f"spiffe://example.org/insignia/agent/a{agent}"
        selectors = [f"unix:uid:{i}", "unix:gid:100"]
        if parent.endswith("/insignia/server"):
            selectors = [f"x509pop:subject:cn:group{i % 7}"]
        made.append(
            validate_entry(
                spiffe_id=f"spiffe://example.org/{tag}/w/{i}",
                parent_id=parent,
                selectors=selectors,
                dns_names=[f"w{i}.example.com"] if i % 3 == 0 else [],
                limits=LIMITS,
            )
        )
    return made


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def row(name: str, ours: float, reference: float, unit: str) -> None:
    print(
        f"{name:<34} {ours:>12.1f} {unit:<10} ref {reference:>12.1f} {unit:<10} "
        f"ratio {ours / reference:6.2f}"
    )


@contextmanager
def postgres_schema(dsn: str) -> Iterator[str]:
    schema = f"bench_{secrets.token_hex(4)}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        yield f"{dsn}?options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


def raw_insert_sqlite(path: Path, entries: list[RegistrationEntry]) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE e (id, spiffe_id, parent_id, d, a, b, h, x, y, z, r, c, u)")
        conn.execute("CREATE TABLE s (entry_id, type, value)")
        conn.execute("CREATE TABLE n (entry_id, position, name)")
        for start in range(0, len(entries), BATCH):
            chunk = entries[start : start + BATCH]
            conn.executemany(
                "INSERT INTO e VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                [
                    (
                        e.id,
                        str(e.spiffe_id),
                        str(e.parent_id),
                        e.id,
                        0,
                        0,
                        "",
                        0,
                        0,
                        None,
                        0,
                        str(e.created_at),
                        str(e.created_at),
                    )
                    for e in chunk
                ],
            )
            conn.executemany(
                "INSERT INTO s VALUES (?,?,?)",
                [(e.id, s.type, s.value) for e in chunk for s in e.selectors],
            )
            conn.executemany(
                "INSERT INTO n VALUES (?,?,?)",
                [(e.id, i, d) for e in chunk for i, d in enumerate(e.dns_names)],
            )
            conn.commit()


def raw_fetch_sqlite(path: Path) -> None:
    with sqlite3.connect(path) as conn:
        for table in ("entries", "entry_selectors", "entry_dns_names", "entry_federates_with"):
            conn.execute(f"SELECT * FROM {table}").fetchall()


def bench_store(name: str, url: str, entries: list[RegistrationEntry], raw: Path | None) -> None:
    with Datastore.open(url) as store:
        create = timed(
            lambda: [
                store.create_entries(entries[i : i + BATCH]) for i in range(0, len(entries), BATCH)
            ]
        )
        if raw is not None:
            reference = timed(lambda: raw_insert_sqlite(raw, entries))
            row(
                f"{name} batch create", len(entries) / create, len(entries) / reference, "entries/s"
            )
        else:
            print(f"{name + ' batch create':<34} {len(entries) / create:>12.1f} entries/s")
        snapshot = timed(store.entries_snapshot)
        if store.backend == "sqlite":
            path = Path(url.removeprefix("sqlite:///"))
            row(
                f"{name} snapshot",
                snapshot * 1000,
                timed(lambda: raw_fetch_sqlite(path)) * 1000,
                "ms",
            )
        else:
            print(f"{name + ' snapshot':<34} {snapshot * 1000:>12.1f} ms")


def bench_authorization(entries: list[RegistrationEntry], agents: int) -> None:
    server = server_spiffe_id(TD)
    build = timed(lambda: EntryIndex(server, entries))
    index = EntryIndex(server, entries)
    print(f"{'index build':<34} {build * 1000:>12.1f} ms for {len(entries)} entries")
    ids = [SpiffeId.parse(f"spiffe://example.org/insignia/agent/a{a}") for a in range(agents)]
    node = {
        a: frozenset([Selector("x509pop", f"subject:cn:group{n % 7}")]) for n, a in enumerate(ids)
    }
    sizes = [len(index.authorized_entries(a, node[a])) for a in ids]
    ours = statistics.median(timed(partial(index.authorized_entries, a, node[a])) for a in ids)
    reference = statistics.median(timed(partial(direct_children, entries, a)) for a in ids[:10])
    row("authorize one agent (median)", ours * 1e6, reference * 1e6, "us")
    print(f"{'  entries per agent (median)':<34} {statistics.median(sizes):>12.0f}")
    changes = [EntryChange(e, replace(e, hint="changed")) for e in entries[:: len(entries) // 50]]
    affected = statistics.median(timed(partial(index.affected_agents, c, node)) for c in changes)
    row("affected agents per change (median)", affected * 1e6, reference * 1e6, "us")


def direct_children(entries: list[RegistrationEntry], agent: SpiffeId) -> list[RegistrationEntry]:
    return [e for e in entries if e.parent_id == agent]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--agents", type=int, default=100)
    parser.add_argument("--postgres", default="")
    args = parser.parse_args()
    print(f"entries={args.entries} agents={args.agents}")
    start = time.perf_counter()
    entries = make_entries(args.entries, args.agents, "bench")
    print(f"{'validate_entry':<34} {args.entries / (time.perf_counter() - start):>12.1f} entries/s")
    bench_authorization(entries, args.agents)
    with tempfile.TemporaryDirectory() as tmp:
        bench_store("sqlite", f"sqlite:///{tmp}/store.sqlite3", entries, Path(tmp) / "raw.db")
    if args.postgres:
        with postgres_schema(args.postgres) as url:
            bench_store("postgresql", url, entries, None)


if __name__ == "__main__":
    main()
