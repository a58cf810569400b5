"""The front's admission policy without sockets: a total and a per-uid cap, and one warning per
episode of refusals."""

from __future__ import annotations

from insignia.daemon.peercred.admission import Admission, Decision, Verdict

ADMITTED = Decision(Verdict.ADMITTED)


def test_one_uid_cannot_take_the_whole_front() -> None:
    admission = Admission(limit=3, per_uid_limit=2)
    assert [admission.admit(1000) for _ in range(3)] == [
        ADMITTED,
        ADMITTED,
        Decision(Verdict.UID_FULL, warn=True),
    ]
    assert admission.admit(1000) == Decision(Verdict.UID_FULL, warn=False)  # same episode
    assert admission.admit(1001) == ADMITTED  # another uid still gets in
    assert admission.admit(1002) == Decision(Verdict.FULL, warn=True)
    assert admission.admit(1002) == Decision(Verdict.FULL, warn=False)


def test_a_released_connection_makes_room_and_ends_the_episode() -> None:
    admission = Admission(limit=2, per_uid_limit=1)
    assert admission.admit(1000) == ADMITTED
    assert admission.admit(1000).verdict is Verdict.UID_FULL
    admission.release(1000)
    assert admission.per_uid == {} and admission.active == 0
    assert admission.admit(1000) == ADMITTED
    assert admission.admit(1000) == Decision(Verdict.UID_FULL, warn=True)  # a new episode


def test_the_per_uid_cap_never_exceeds_the_total() -> None:
    assert Admission(limit=4, per_uid_limit=100).per_uid_limit == 4
