"""atomic_write and ensure_private_dir: exact modes, atomic replacement, refusal of unsafe dirs."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from insignia.daemon.files import UnsafeDirectory, atomic_write, ensure_private_dir


@pytest.fixture
def umask_zero() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def mode_of(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.mark.parametrize("mode", [0o600, 0o640, 0o644, 0o400])
def test_atomic_write_sets_exact_mode_whatever_the_umask(tmp_path: Path, mode: int) -> None:
    old = os.umask(0o077)  # would narrow 0644 to 0600 without the explicit fchmod
    try:
        atomic_write(tmp_path / "f", b"data", mode)
    finally:
        os.umask(old)
    assert mode_of(tmp_path / "f") == mode
    assert (tmp_path / "f").read_bytes() == b"data"


def test_default_mode_is_private_even_with_permissive_umask(
    tmp_path: Path, umask_zero: None
) -> None:
    atomic_write(tmp_path / "key.pem", b"secret")
    assert mode_of(tmp_path / "key.pem") == 0o600


def test_atomic_write_replaces_and_narrows_existing_file(tmp_path: Path) -> None:
    target = tmp_path / "key.pem"
    target.write_bytes(b"old content that is longer")
    target.chmod(0o644)
    atomic_write(target, b"new")
    assert target.read_bytes() == b"new"
    assert mode_of(target) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["key.pem"]  # no temp left behind


def test_atomic_write_replaces_a_symlink_instead_of_writing_through_it(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_bytes(b"untouched")
    link = tmp_path / "link"
    link.symlink_to(elsewhere)
    atomic_write(link, b"new")
    assert elsewhere.read_bytes() == b"untouched"
    assert not link.is_symlink()
    assert link.read_bytes() == b"new"


def test_failed_write_leaves_target_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "f"
    target.write_bytes(b"keep")
    with pytest.raises(TypeError):
        atomic_write(target, "not bytes")  # type: ignore[arg-type]
    assert target.read_bytes() == b"keep"
    assert [p.name for p in tmp_path.iterdir()] == ["f"]


def test_large_payload_is_written_completely(tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 * 1024 + 7)
    atomic_write(tmp_path / "big", data)
    assert (tmp_path / "big").read_bytes() == data


def test_ensure_private_dir_creates_0700_with_parents(tmp_path: Path, umask_zero: None) -> None:
    d = ensure_private_dir(tmp_path / "a" / "b")
    assert d == tmp_path / "a" / "b"
    assert mode_of(d) == 0o700


def test_ensure_private_dir_leaves_an_existing_dirs_mode_alone(tmp_path: Path) -> None:
    # Like /run for admin_socket = "/run/x.sock": narrowing it would break its other users.
    d = tmp_path / "d"
    d.mkdir()
    d.chmod(0o755)
    assert ensure_private_dir(d) == d
    assert mode_of(d) == 0o755


@pytest.mark.parametrize("mode", [0o775, 0o757, 0o1777])
def test_ensure_private_dir_refuses_a_dir_others_can_write(tmp_path: Path, mode: int) -> None:
    d = tmp_path / "d"
    d.mkdir()
    d.chmod(mode)
    with pytest.raises(UnsafeDirectory, match="writable by group or others") as info:
        ensure_private_dir(d)
    assert info.value.path == d
    assert mode_of(d) == mode  # refused, not changed


def test_ensure_private_dir_refuses_a_symlink(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(real)
    with pytest.raises(UnsafeDirectory, match="not a directory"):
        ensure_private_dir(tmp_path / "link")


def test_ensure_private_dir_refuses_a_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"")
    with pytest.raises(UnsafeDirectory, match="not a directory"):
        ensure_private_dir(tmp_path / "f")


@pytest.mark.root
def test_ensure_private_dir_refuses_a_dir_owned_by_another_uid(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to chown")
    d = tmp_path / "theirs"
    d.mkdir(mode=0o700)
    os.chown(d, 65534, 65534)
    with pytest.raises(UnsafeDirectory, match="owned by uid 65534") as info:
        ensure_private_dir(d)
    assert info.value.path == d
    assert mode_of(d) == 0o700  # refused before touching it
