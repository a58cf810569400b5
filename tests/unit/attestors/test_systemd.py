from __future__ import annotations

from pathlib import Path

import pytest

from insignia.attestors.cgroup import parse_cgroup_file
from insignia.attestors.workload.systemd import (
    DEFAULT_UNIT_DIRS,
    SystemdConfig,
    fragment_path,
    systemd_cgroup_path,
    unit_from_cgroup_path,
)


@pytest.mark.parametrize(
    ("path", "unit"),
    [
        ("/system.slice/nginx.service", "nginx.service"),
        ("/system.slice/system-getty.slice/getty@tty1.service", "getty@tty1.service"),
        ("/init.scope", "init.scope"),
        ("/user.slice/user-1000.slice/session-3.scope", "session-3.scope"),
        # Units below user@.service belong to the user's manager; systemd reports the system unit.
        (
            "/user.slice/user-1000.slice/user@1000.service/app.slice/foo.service",
            "user@1000.service",
        ),
        # A Delegate=yes unit owns its subtree: names inside it are the unit's own choice.
        ("/system.slice/builder.service/sshd.service", "builder.service"),
        ("/system.slice/home-user\\x2dname.mount", "home-user\\x2dname.mount"),
        ("/", None),
        ("/system.slice", None),
        ("/docker/abc", None),
        ("/../system.slice/nginx.service", None),
    ],
)
def test_unit_is_the_first_non_slice_segment(path: str, unit: str | None) -> None:
    assert unit_from_cgroup_path(path) == unit


def test_name_systemd_hierarchy_wins_over_the_unified_line_on_hybrid_hosts() -> None:
    hybrid = "9:name=systemd:/system.slice/a.service\n0::/system.slice/b.service\n"
    assert systemd_cgroup_path(parse_cgroup_file(hybrid)) == "/system.slice/a.service"
    pure_v2 = "0::/system.slice/b.service\n"
    assert systemd_cgroup_path(parse_cgroup_file(pure_v2)) == "/system.slice/b.service"
    v1_without_systemd = "4:memory:/x\n"
    assert systemd_cgroup_path(parse_cgroup_file(v1_without_systemd)) is None


def test_fragment_path_follows_directory_precedence_and_templates(tmp_path: Path) -> None:
    etc, lib = tmp_path / "etc", tmp_path / "lib"
    etc.mkdir()
    lib.mkdir()
    (lib / "web.service").write_text("[Service]\n")
    (etc / "web.service").write_text("[Service]\n")
    (lib / "worker@.service").write_text("[Service]\n")
    dirs = (str(etc), str(lib))
    assert fragment_path("web.service", dirs) == str(etc / "web.service")
    assert fragment_path("worker@3.service", dirs) == str(lib / "worker@.service")
    assert fragment_path("transient.scope", dirs) is None


def test_default_unit_dirs_put_admin_overrides_before_packages() -> None:
    assert SystemdConfig().unit_dirs == DEFAULT_UNIT_DIRS
    order = DEFAULT_UNIT_DIRS.index
    assert (
        order("/etc/systemd/system") < order("/run/systemd/system") < order("/lib/systemd/system")
    )
