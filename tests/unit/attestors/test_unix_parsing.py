from __future__ import annotations

import pytest

from insignia.attestors.workload.unix import HashCache, id_selectors
from insignia.daemon.peercred.credentials import ProcessIds, parse_status
from insignia.selectors import Selector

STATUS = """\
Name:\tpython3
Umask:\t0022
State:\tS (sleeping)
Uid:\t1000\t1001\t1002\t1003
Gid:\t2000\t2001\t2002\t2003
FDSize:\t64
Groups:\t4 27 100
"""


def test_effective_ids_and_supplementary_groups_are_read() -> None:
    assert parse_status(STATUS) == ProcessIds(uid=1001, gid=2001, groups=(4, 27, 100))


def test_empty_groups_line() -> None:
    text = STATUS.replace("Groups:\t4 27 100", "Groups:\t")
    assert parse_status(text).groups == ()


@pytest.mark.parametrize(
    "text",
    [
        "Name:\tx\n",
        STATUS.replace("Uid:\t1000\t1001\t1002\t1003", "Uid:\t1000"),
        STATUS.replace("Gid:\t2000", "Gid:\tabc"),
        STATUS.replace("Groups:\t4 27 100", "Groups:\t4 x"),
    ],
)
def test_malformed_status_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="Uid/Gid"):
        parse_status(text)


def test_root_gets_names_for_ids_known_to_the_system() -> None:
    selectors = id_selectors(ProcessIds(uid=0, gid=0, groups=(0, 4242424)))
    assert selectors == [
        Selector("unix", "uid:0"),
        Selector("unix", "gid:0"),
        Selector("unix", "user:root"),
        Selector("unix", "group:root"),
        Selector("unix", "supplementary_gid:0"),
        Selector("unix", "supplementary_group:root"),
        Selector("unix", "supplementary_gid:4242424"),
    ]


def test_hash_cache_evicts_least_recently_used() -> None:
    cache = HashCache(capacity=2)
    k1, k2, k3 = ((1, i, 10, 5, 5) for i in range(3))
    cache.put(k1, "a")
    cache.put(k2, "b")
    assert cache.get(k1) == "a"  # k1 is now the most recent
    cache.put(k3, "c")
    assert cache.get(k2) is None
    assert (cache.get(k1), cache.get(k3)) == ("a", "c")
