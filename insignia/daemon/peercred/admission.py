"""Who the front lets in: at most `limit` connections, and `per_uid_limit` per connecting uid.

The bookkeeping and the decision, without sockets: the accept loop asks `admit(uid)` for each
new connection (uid from SO_PEERCRED), closes it when refused, logs when told to (once per
episode of refusals, overall and per uid, not once per refused connection), and calls
`release(uid)` when an admitted connection ends.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Verdict(enum.Enum):
    ADMITTED = "admitted"
    FULL = "full"  # `limit` connections are open
    UID_FULL = "uid_full"  # this uid holds `per_uid_limit` of them


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict
    warn: bool = False  # the first refusal of its episode: log it


class Admission:
    def __init__(self, limit: int, per_uid_limit: int) -> None:
        self.limit = limit
        self.per_uid_limit = min(per_uid_limit, limit)
        self.active = 0
        self.per_uid: dict[int, int] = {}
        self._saturated = False
        self._saturated_uids: set[int] = set()

    def admit(self, uid: int) -> Decision:
        if self.active >= self.limit:
            warn, self._saturated = not self._saturated, True
            return Decision(Verdict.FULL, warn)
        self._saturated = False
        if self.per_uid.get(uid, 0) >= self.per_uid_limit:
            warn = uid not in self._saturated_uids
            self._saturated_uids.add(uid)
            return Decision(Verdict.UID_FULL, warn)
        self._saturated_uids.discard(uid)
        self.active += 1
        self.per_uid[uid] = self.per_uid.get(uid, 0) + 1
        return Decision(Verdict.ADMITTED)

    def release(self, uid: int) -> None:
        self.active -= 1
        self.per_uid[uid] -= 1
        if not self.per_uid[uid]:
            del self.per_uid[uid]
