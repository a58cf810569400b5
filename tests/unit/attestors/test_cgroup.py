from __future__ import annotations

import pytest

from insignia.attestors.cgroup import CgroupEntry, MalformedCgroup, parse_cgroup_file

HYBRID = """\
10:hugetlb:/
9:name=systemd:/system.slice/nginx.service
4:cpu,cpuacct:/docker/aa
0::/system.slice/nginx.service
"""


def test_hybrid_file_gives_one_entry_per_line_with_controllers_split() -> None:
    entries = parse_cgroup_file(HYBRID)
    assert entries == (
        CgroupEntry(10, ("hugetlb",), "/"),
        CgroupEntry(9, ("name=systemd",), "/system.slice/nginx.service"),
        CgroupEntry(4, ("cpu", "cpuacct"), "/docker/aa"),
        CgroupEntry(0, (), "/system.slice/nginx.service"),
    )
    assert [e.unified for e in entries] == [False, False, False, True]


def test_colons_inside_the_path_stay_in_the_path() -> None:
    (entry,) = parse_cgroup_file("3:pids:/kubepods-pod1.slice:cri-containerd:abc\n")
    assert entry.path == "/kubepods-pod1.slice:cri-containerd:abc"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "no cgroup lines"),
        ("garbage\n", "expected 'id:controllers:path'"),
        ("x:pids:/a\n", "hierarchy id is not a number"),
        ("0::relative\n", "does not start with '/'"),
        ("0::/ok\n1:pids\n", "expected 'id:controllers:path'"),
        ("0::/a\x00b\n", "NUL"),
    ],
)
def test_malformed_files_are_refused_naming_the_line(text: str, reason: str) -> None:
    with pytest.raises(MalformedCgroup, match=reason):
        parse_cgroup_file(text)
