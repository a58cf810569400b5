"""The console's entry list at scale: keyset pages, beside references measured in the same run.

    .venv/bin/python -m benchmarks.console_entries [--entries 100000]
        [--postgres postgresql://postgres@127.0.0.1:5432/test]

Rows (ours | reference | ratio), each the median of several runs:
- first page: `Datastore.page_entries(limit=51)` | the same page by LIMIT/OFFSET 0.
- last page: `page_entries(after=<id 51 from the end>)` | LIMIT/OFFSET N-51, which walks
  every row before it.
- filtered page (a selector every entry holds, then one only the last holds): keyset with
  `selectors` | the same filter through `list_entries`, what `entry show --selector` loads.
- every entry: `list_entries()` (what `entry show` loads) | the last keyset page.
This is a measurement, never a test.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import sqlalchemy as sa

from benchmarks.server_datastore import BATCH, make_entries
from insignia.selectors import Selector
from insignia.server.datastore import Datastore, entry_queries
from insignia.server.datastore.schema import entries

PAGE = 51  # the console shows 50 and asks one more to know whether a next page exists


def median_ms(fn: Callable[[], object], runs: int = 7) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def row(name: str, ours: float, reference: float) -> None:
    print(
        f"{name:<28} {ours:>10.2f} ms   ref {reference:>10.2f} ms   ratio {ours / reference:7.3f}"
    )


def offset_page(store: Datastore, offset: int) -> object:
    with store._read() as conn:  # the reference reads the same tables, by OFFSET
        ids = conn.execute(
            sa.select(entries.c.id)
            .order_by(entries.c.spiffe_id, entries.c.id)
            .limit(PAGE)
            .offset(offset)
        ).scalars()
        return entry_queries.load_by_ids(conn, list(ids))


def run(url: str, count: int) -> None:
    with Datastore.open(url) as store:
        made = make_entries(count, 100, "bench")
        for start in range(0, count, BATCH):
            store.create_entries(made[start : start + BATCH])
        order = sorted((str(e.spiffe_id), e.id) for e in made)  # ASCII: as SQLite collates
        last_after = order[-PAGE - 1]
        print(f"{count} entries ({store.backend})")
        row(
            "first page",
            median_ms(lambda: store.page_entries(limit=PAGE)),
            median_ms(lambda: offset_page(store, 0)),
        )
        row(
            "last page",
            median_ms(lambda: store.page_entries(after=last_after, limit=PAGE)),
            median_ms(lambda: offset_page(store, count - PAGE)),
        )
        for name, selector in (
            ("page, common selector", [Selector("unix", "gid:100")]),
            ("page, rare selector", [Selector("unix", f"uid:{count - 1}")]),
        ):
            row(
                name,
                median_ms(lambda s=selector: store.page_entries(limit=PAGE, selectors=s), 3),
                median_ms(lambda s=selector: store.list_entries(selectors=s), 1),
            )
        row(
            "every entry vs a keyset page",
            median_ms(store.list_entries, 1),
            median_ms(lambda: store.page_entries(after=last_after, limit=PAGE)),
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--postgres", default="")
    args = parser.parse_args()
    if args.postgres:
        run(args.postgres, args.entries)
        return
    with tempfile.TemporaryDirectory() as scratch:
        run(f"sqlite:///{Path(scratch) / 'bench.sqlite3'}", args.entries)


if __name__ == "__main__":
    main()
