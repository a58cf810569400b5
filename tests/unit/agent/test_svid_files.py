"""SVID files for legacy software: what gets written, in which order, with which modes, and
what happens around the reload command. Real certificates, real files, real processes."""

from __future__ import annotations

import os
import stat
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from structlog.testing import capture_logs

from insignia.agent.helper.reload_command import InvalidReloadCommand, ReloadCommand, run_reload
from insignia.agent.helper.svid_files import (
    BUNDLE_FILE,
    KEY_FILE,
    SVID_FILE,
    VERSIONS_DIR,
    FileState,
    HelperSettings,
    Layout,
    NoMatchingSvid,
    SvidFilesHelper,
    files_to_write,
    read_state,
    remove_leftovers,
    render_files,
    select_svid,
    sync_files,
)
from insignia.bundle import Bundle, BundleSet
from insignia.keys import KeyType, generate_key, private_key_from_pem
from insignia.server.ca.x509_leaf import build_leaf
from insignia.server.ca.x509ca import SigningAuthority, build_intermediate_ca
from insignia.spiffeid import SpiffeId, TrustDomain
from insignia.workloadapi import X509Context
from insignia.x509svid import X509Svid
from tests.unit.common import NOW, TD, make_ca

FED = TrustDomain.parse("partner.test")
PY = sys.executable


def make_svid(
    ca: SigningAuthority, path: str = "/web", hint: str = "", via_intermediate: bool = False
) -> X509Svid:
    signer = ca
    extra: tuple[x509.Certificate, ...] = ()
    if via_intermediate:
        key = generate_key(KeyType.EC_P256)
        cert = build_intermediate_ca(ca, key.public_key(), TD, timedelta(hours=2), now=NOW)
        signer, extra = SigningAuthority(cert, key, (cert, ca.certificate)), (cert,)
    key = generate_key(KeyType.EC_P256)
    sid = SpiffeId.parse(f"spiffe://{TD}{path}")
    leaf = build_leaf(key.public_key(), sid, timedelta(hours=1), signer, now=NOW)
    return X509Svid(sid, (leaf, *extra), key, hint)


def context(*svids: X509Svid, bundles: tuple[Bundle, ...]) -> X509Context:
    return X509Context(svids, BundleSet.of(bundles))


@pytest.fixture
def ca() -> SigningAuthority:
    return make_ca()


def pem_certs(data: bytes) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(data)


# ------------------------------------------------------------------------ pure decisions


def test_files_are_rendered_bundle_then_key_then_certificate(ca: SigningAuthority) -> None:
    svid = make_svid(ca, via_intermediate=True)
    files = render_files(context(svid, bundles=(Bundle(TD, (ca.certificate,)),)))
    assert [f.name for f in files] == [BUNDLE_FILE, KEY_FILE, SVID_FILE]
    bundle, key, cert = files
    assert (bundle.mode, key.mode, cert.mode) == (0o644, 0o600, 0o644)
    assert pem_certs(bundle.data) == [ca.certificate]
    assert pem_certs(cert.data) == list(svid.chain) and len(svid.chain) == 2
    assert b"BEGIN PRIVATE KEY" in key.data  # PKCS#8, not SEC1 "EC PRIVATE KEY"
    assert private_key_from_pem(key.data).public_key() == svid.leaf.public_key()


def test_federated_authorities_are_appended_only_when_asked(ca: SigningAuthority) -> None:
    fed_ca = make_ca(FED)
    ctx = context(
        make_svid(ca), bundles=(Bundle(FED, (fed_ca.certificate,)), Bundle(TD, (ca.certificate,)))
    )
    assert pem_certs(render_files(ctx)[0].data) == [ca.certificate]
    with_fed = render_files(ctx, Layout(include_federated=True))[0].data
    assert pem_certs(with_fed) == [ca.certificate, fed_ca.certificate]


def test_the_svid_is_chosen_by_hint(ca: SigningAuthority) -> None:
    first, second = make_svid(ca, "/a", hint="internal"), make_svid(ca, "/b", hint="external")
    ctx = context(first, second, bundles=(Bundle(TD, (ca.certificate,)),))
    assert select_svid(ctx) is first
    assert select_svid(ctx, "external") is second
    with pytest.raises(NoMatchingSvid) as caught:
        select_svid(ctx, "db")
    assert caught.value.hint == "db" and caught.value.available == ("internal", "external")


def test_only_files_that_differ_in_content_or_mode_are_written(ca: SigningAuthority) -> None:
    desired = render_files(context(make_svid(ca), bundles=(Bundle(TD, (ca.certificate,)),)))
    same = {f.name: FileState(f.data, f.mode) for f in desired}
    assert files_to_write(desired, same) == ()
    assert files_to_write(desired, {}) == desired  # nothing on disk: everything, in order
    loose_key = {**same, KEY_FILE: FileState(desired[1].data, 0o644)}
    assert [f.name for f in files_to_write(desired, loose_key)] == [KEY_FILE]
    stale = {**same, SVID_FILE: FileState(b"old", 0o644), BUNDLE_FILE: None}
    assert [f.name for f in files_to_write(desired, stale)] == [BUNDLE_FILE, SVID_FILE]


# ------------------------------------------------------------------------ files on disk


def test_key_is_0600_and_a_second_sync_writes_nothing(ca: SigningAuthority, tmp_path: Path) -> None:
    out = tmp_path / "certs"
    ctx = context(make_svid(ca), bundles=(Bundle(TD, (ca.certificate,)),))
    os.umask(0o022)
    assert sync_files(out, ctx, Layout()) == (BUNDLE_FILE, KEY_FILE, SVID_FILE)
    names = (BUNDLE_FILE, KEY_FILE, SVID_FILE)
    modes = {name: stat.S_IMODE((out / name).stat().st_mode) for name in names}
    assert modes == {BUNDLE_FILE: 0o644, KEY_FILE: 0o600, SVID_FILE: 0o644}
    assert sync_files(out, ctx, Layout()) == ()

    (out / KEY_FILE).chmod(0o640)  # someone loosened it: the helper puts it back
    assert sync_files(out, ctx, Layout()) == (KEY_FILE,)
    assert stat.S_IMODE((out / KEY_FILE).stat().st_mode) == 0o600


def test_rotation_replaces_files_atomically(ca: SigningAuthority, tmp_path: Path) -> None:
    bundles = (Bundle(TD, (ca.certificate,)),)
    old, new = make_svid(ca), make_svid(ca)
    sync_files(tmp_path, context(old, bundles=bundles), Layout())
    inode_before = (tmp_path / SVID_FILE).stat().st_ino
    with open(tmp_path / SVID_FILE, "rb") as reader_of_old:
        assert sync_files(tmp_path, context(new, bundles=bundles), Layout()) == (
            KEY_FILE,
            SVID_FILE,
        )
        # A reader that opened the old file still reads it whole: rename, not overwrite.
        assert pem_certs(reader_of_old.read()) == [old.leaf]
    assert (tmp_path / SVID_FILE).stat().st_ino != inode_before
    assert pem_certs((tmp_path / SVID_FILE).read_bytes()) == [new.leaf]
    key = private_key_from_pem((tmp_path / KEY_FILE).read_bytes())
    assert key.public_key() == new.leaf.public_key()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        VERSIONS_DIR, BUNDLE_FILE, SVID_FILE, KEY_FILE
    ]  # fmt: skip
    # The old version is gone; the configured paths are fixed symlinks into `current`.
    assert len([p for p in (tmp_path / VERSIONS_DIR).iterdir() if not p.is_symlink()]) == 1
    assert os.readlink(tmp_path / KEY_FILE) == f"{VERSIONS_DIR}/current/{KEY_FILE}"


def test_the_pair_switches_with_one_rename(ca: SigningAuthority, tmp_path: Path) -> None:
    """Whatever a kill interrupts, the key and certificate on disk are one version's."""
    bundles = (Bundle(TD, (ca.certificate,)),)
    old, new = make_svid(ca), make_svid(ca)
    sync_files(tmp_path, context(old, bundles=bundles), Layout())
    links = {name: os.readlink(tmp_path / name) for name in (BUNDLE_FILE, KEY_FILE, SVID_FILE)}
    sync_files(tmp_path, context(new, bundles=bundles), Layout())
    assert {name: os.readlink(tmp_path / name) for name in links} == links  # never re-pointed
    current = tmp_path / VERSIONS_DIR / "current"
    assert private_key_from_pem((current / KEY_FILE).read_bytes()).public_key() == (
        pem_certs((current / SVID_FILE).read_bytes())[0].public_key()
    )


def test_leftovers_of_a_killed_helper_are_removed(ca: SigningAuthority, tmp_path: Path) -> None:
    bundles = (Bundle(TD, (ca.certificate,)),)
    sync_files(tmp_path, context(make_svid(ca), bundles=bundles), Layout())
    (tmp_path / ".svid_key.pem.0123456789abcdef.tmp").write_bytes(b"a key copy")
    (tmp_path / VERSIONS_DIR / "half-written").mkdir()
    (tmp_path / VERSIONS_DIR / "half-written" / KEY_FILE).write_bytes(b"a key copy")
    remove_leftovers(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        VERSIONS_DIR, BUNDLE_FILE, SVID_FILE, KEY_FILE
    ]  # fmt: skip
    assert len(list((tmp_path / VERSIONS_DIR).iterdir())) == 2  # current and its target
    assert (tmp_path / KEY_FILE).read_bytes().startswith(b"-----BEGIN PRIVATE KEY")


def test_regular_files_of_an_older_release_become_symlinks(
    ca: SigningAuthority, tmp_path: Path
) -> None:
    ctx = context(make_svid(ca), bundles=(Bundle(TD, (ca.certificate,)),))
    for f in render_files(ctx):
        (tmp_path / f.name).write_bytes(f.data)
        (tmp_path / f.name).chmod(f.mode)
    assert sync_files(tmp_path, ctx, Layout()) == ()  # same content: no reload
    assert (tmp_path / SVID_FILE).is_symlink() and (tmp_path / KEY_FILE).is_symlink()


def test_read_state_reports_missing_files_as_none(tmp_path: Path) -> None:
    (tmp_path / SVID_FILE).write_bytes(b"x")
    (tmp_path / SVID_FILE).chmod(0o640)
    assert read_state(tmp_path, (SVID_FILE, KEY_FILE)) == {
        SVID_FILE: FileState(b"x", 0o640),
        KEY_FILE: None,
    }


# ------------------------------------------------------------------------ the reload command


def test_reload_command_is_split_like_a_shell_and_validated() -> None:
    cmd = ReloadCommand.parse("nginx -s reload -g 'pid /tmp/a b.pid;'", timeout=5)
    assert cmd.argv == ("nginx", "-s", "reload", "-g", "pid /tmp/a b.pid;")
    for bad in ("", "   ", "nginx 'unbalanced"):
        with pytest.raises(InvalidReloadCommand) as caught:
            ReloadCommand.parse(bad)
        assert caught.value.command == bad
    with pytest.raises(InvalidReloadCommand, match="timeout"):
        ReloadCommand.parse("true", timeout=0)


async def test_reload_command_is_not_run_by_a_shell(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    result = await run_reload(
        ReloadCommand.parse(f"{PY} -c 'import sys; print(sys.argv)' ; touch {marker}")
    )
    assert result.ok
    assert "';', 'touch'" in result.stdout  # `;` arrived as an argument
    assert not marker.exists()


async def test_reload_command_that_hangs_is_killed_at_its_timeout() -> None:
    result = await run_reload(
        ReloadCommand.parse(f"{PY} -c 'import time; time.sleep(60)'", timeout=0.3)
    )
    assert result.returncode is None and "timed out after 0.3s" in result.error


async def test_missing_program_is_reported_not_raised() -> None:
    result = await run_reload(ReloadCommand.parse("/nonexistent/reload-me now"))
    assert result.returncode is None and "cannot run" in result.error
    assert "/nonexistent/reload-me" in result.error


async def test_failing_reload_is_logged_and_the_helper_carries_on(
    ca: SigningAuthority, tmp_path: Path
) -> None:
    out = tmp_path / "certs"
    seen = tmp_path / "seen.pem"
    # Copies svid.pem as the command sees it (proving it runs after the write), then fails.
    script = (
        "import shutil, sys; shutil.copy(sys.argv[1], sys.argv[2]); "
        "print('reload refused', file=sys.stderr); sys.exit(3)"
    )
    command = ReloadCommand((PY, "-c", script, str(out / SVID_FILE), str(seen)), timeout=30)
    helper = SvidFilesHelper(HelperSettings(out, tmp_path / "unused.sock", command))
    bundles = (Bundle(TD, (ca.certificate,)),)
    first, second = make_svid(ca), make_svid(ca)

    with capture_logs() as logs:
        assert await helper.apply(context(first, bundles=bundles)) == (
            BUNDLE_FILE,
            KEY_FILE,
            SVID_FILE,
        )
        assert await helper.apply(context(first, bundles=bundles)) == ()  # no change, no reload
        assert await helper.apply(context(second, bundles=bundles)) == (KEY_FILE, SVID_FILE)

    failures = [e for e in logs if e["event"] == "svid_files.reload_failed"]
    assert len(failures) == 2
    assert failures[0]["returncode"] == 3 and failures[0]["stderr"] == "reload refused"
    assert helper.updates == 2
    assert pem_certs(seen.read_bytes()) == [second.leaf]
    written = [e for e in logs if e["event"] == "svid_files.written"]
    assert [e["serial"] for e in written] == [
        format(s.leaf.serial_number, "x") for s in (first, second)
    ]
