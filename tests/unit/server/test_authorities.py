"""The CA slots with the real datastore journal and key managers, time moved by the test."""

from datetime import timedelta
from pathlib import Path

from insignia.keys import KeyType
from insignia.server.ca.authorities import Authorities
from insignia.server.ca.keymanager import DiskKeyManager, MemoryKeyManager
from insignia.server.ca.rotation import AuthorityState
from insignia.server.ca.state import CaSettings, new_key_slot, x509_authority_id
from tests.datastores import Clock, fresh_store
from tests.unit.common import TD

SETTINGS = CaSettings(TD, KeyType.EC_P256, KeyType.EC_P256, timedelta(hours=24))


def states(authorities: Authorities, kind: str) -> list[str]:
    return [r.state.value for r in authorities.state.records(kind)]  # type: ignore[arg-type]


def test_schedule_restart_and_bundle(tmp_path: Path) -> None:
    clock = Clock()
    keys = DiskKeyManager(tmp_path / "keys")
    with fresh_store("sqlite", tmp_path, clock) as store:
        ca = Authorities(SETTINGS, keys, store, clock)
        steps = [s.split()[:2] for s in ca.load()]
        assert steps == [
            ["x509", "prepared"],
            ["x509", "activated"],
            ["jwt", "prepared"],
            ["jwt", "activated"],
            ["wit", "prepared"],
            ["wit", "activated"],
        ]
        assert states(ca, "x509") == ["active"] and states(ca, "jwt") == ["active"]
        assert states(ca, "wit") == ["active"]
        bundle = ca.bundle()
        assert len(bundle.wit_authorities) == 1 and len(bundle.jwt_authorities) == 1
        assert not bundle.wit_authorities.keys() & bundle.jwt_authorities.keys()
        first = ca.state.active_x509()
        assert first is not None
        clock.now += timedelta(hours=11, minutes=59)
        assert ca.rotate() == []
        clock.now += timedelta(minutes=1)  # min(24h/2, 30d) left: prepare a successor
        assert [s.split()[:2] for s in ca.rotate()] == [
            ["x509", "prepared"],
            ["jwt", "prepared"],
            ["wit", "prepared"],
        ]
        assert states(ca, "x509") == ["active", "prepared"]
        assert len(ca.bundle().x509_authorities) == 2  # published before use
        clock.now += timedelta(hours=8)
        ca.rotate()
        assert states(ca, "x509") == ["old", "active"]  # min(24h/6, 7d) left: activate
        assert states(ca, "jwt") == ["old", "active"]
        assert states(ca, "wit") == ["old", "active"]
        assert len(ca.bundle().wit_authorities) == 2  # the old key until it expires
        second = ca.state.active_x509()
        assert second is not None and second.certificate != first.certificate
        # a restart (new objects, same database and key directory) keeps every slot
        again = Authorities(SETTINGS, DiskKeyManager(tmp_path / "keys"), store, clock)
        again.load()
        assert again.state.records("x509") == ca.state.records("x509")
        assert again.state.records("jwt") == ca.state.records("jwt")
        assert again.state.records("wit") == ca.state.records("wit")
        assert again.state.active_key("wit") is not None
        reloaded = again.state.active_x509()
        assert reloaded is not None and reloaded.certificate == second.certificate
        assert reloaded.private_key.private_numbers() == second.private_key.private_numbers()
        clock.now += timedelta(hours=4, seconds=1)  # the first CA expires: it leaves the bundle
        again.rotate()
        ids = {x509_authority_id(c) for c in again.bundle().x509_authorities}
        assert x509_authority_id(first.certificate) not in ids
        assert not (tmp_path / "keys" / f"x509-{x509_authority_id(first.certificate)}.pem").exists()


def test_memory_keys_after_restart_demote_and_replace(tmp_path: Path) -> None:
    clock = Clock()
    with fresh_store("sqlite", tmp_path, clock) as store:
        ca = Authorities(SETTINGS, MemoryKeyManager(), store, clock)
        ca.load()
        old_id = ca.state.records("x509")[0].authority_id
        restarted = Authorities(SETTINGS, MemoryKeyManager(), store, clock)
        restarted.load()
        records = {r.authority_id: r.state for r in restarted.state.records("x509")}
        assert records[old_id] is AuthorityState.OLD  # still published, cannot sign
        assert list(records.values()).count(AuthorityState.ACTIVE) == 1
        assert restarted.state.active_x509() is not None


def test_disk_keys_are_private(tmp_path: Path) -> None:
    clock = Clock()
    with fresh_store("sqlite", tmp_path, clock) as store:
        Authorities(SETTINGS, DiskKeyManager(tmp_path / "keys"), store, clock).load()
    assert (tmp_path / "keys").stat().st_mode & 0o777 == 0o700
    files = list((tmp_path / "keys").iterdir())
    assert len(files) == 3  # the X.509 CA, the JWT key and the WIT key
    assert all(f.stat().st_mode & 0o777 == 0o600 for f in files)


def test_jwt_kids_are_safe_to_pass_on_a_command_line() -> None:
    keys = MemoryKeyManager()
    now = Clock().now
    kids = {new_key_slot("jwt", SETTINGS, keys, now).record.authority_id for _ in range(64)}
    assert len(kids) == 64
    for kid in kids:
        assert kid[0] != "-" and kid.isalnum(), kid  # `authority jwt taint KID` must parse


def test_an_active_key_tainted_by_another_server_signs_no_more_and_is_replaced(
    tmp_path: Path,
) -> None:
    """Two servers on one journal: server 2 taints server 1's active X.509 key; server 1
    adopts it, stops signing with it, prepares a successor, then activates it."""
    clock = Clock()
    with fresh_store("sqlite", tmp_path, clock) as store:
        one = Authorities(SETTINGS, MemoryKeyManager(), store, clock, server_id="one")
        two = Authorities(SETTINGS, MemoryKeyManager(), store, clock, server_id="two")
        one.load()
        two.load()
        first = one.state.active_x509()
        assert first is not None
        active = x509_authority_id(first.certificate)
        two.taint("x509", active)
        assert active in two.tainted("x509")
        assert one.adopt_journal() and one.compromised()
        assert one.state.active_x509() is None  # a tainted key signs nothing more
        done, prepared = one.replace_compromised()
        assert prepared and done[0].startswith("x509 prepared")
        assert one.state.active_x509() is None  # not before it reached every bundle
        done, prepared = one.replace_compromised()
        assert not prepared and done[0].startswith("x509 activated")
        successor = one.state.active_x509()
        assert successor is not None and successor.certificate != first.certificate
        assert not one.compromised() and states(one, "x509") == ["old", "active"]
        two.adopt_journal()
        two.revoke("x509", active)
        assert one.adopt_journal() and states(one, "x509") == ["active"]
