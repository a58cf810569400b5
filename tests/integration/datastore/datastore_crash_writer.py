"""A writer for the kill -9 test: stores entries (single and batches) until it is killed,
printing the ids of each transaction right after it commits.

Every entry's content follows from its id, `<round>-<batch>-<member>of<size>`, so the test
can check a surviving entry field by field and a batch for completeness.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime

from insignia.server.datastore import Datastore
from insignia.server.entries import EntryLimits, RegistrationEntry, validate_entry
from insignia.spiffeid import TrustDomain

LIMITS = EntryLimits(TrustDomain("example.org"), 86400, 3600)
CREATED = datetime(2030, 1, 1, tzinfo=UTC)


def batch_size(batch: int) -> int:
    return 1 if batch % 3 == 0 else 2 + batch % 7


def expected(entry_id: str) -> RegistrationEntry:
    round_, batch, member = entry_id.split("-")
    n, k = int(batch), int(member.split("of")[0])
    return validate_entry(
        entry_id=entry_id,
        spiffe_id=f"spiffe://example.org/crash/{round_}/{n}/{k}",
        parent_id=f"spiffe://example.org/insignia/agent/join_token/{round_}",
        selectors=[f"unix:uid:{k}", f"unix:gid:{n}", f"k8s:ns:round-{round_}"]
        + [f"docker:label:l{i}={n}" for i in range(k % 5)],
        x509_svid_ttl=60 + n,
        jwt_svid_ttl=k + 2,  # at least MIN_JWT_SVID_TTL
        dns_names=[f"s{k}.b{n}.example.com", f"alt{k}.example.net"],
        federates_with=["partner.org"] if n % 2 else [],
        hint=entry_id,
        admin=bool(k % 2),
        downstream=bool(n % 2),
        limits=LIMITS,
        now=CREATED,
    )


def batch_ids(round_: str, batch: int) -> list[str]:
    size = batch_size(batch)
    return [f"{round_}-{batch}-{k}of{size}" for k in range(size)]


def main(url: str, round_: str) -> None:
    with Datastore.open(url) as store:
        batch = 0
        while True:
            entries = [expected(i) for i in batch_ids(round_, batch)]
            if len(entries) == 1:
                store.create_entry(entries[0])
            else:
                store.create_entries(entries)
            print(",".join(e.id for e in entries), flush=True)
            batch += 1


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
