"""The agent's own SVID survives a restart, and a crash can never split it from its key."""

from __future__ import annotations

import stat
from datetime import timedelta
from hashlib import sha256
from pathlib import Path

from structlog.testing import capture_logs

from insignia.agent.identity.node_attestation import (
    IDENTITY_FILE,
    AgentIdentity,
    forget_identity,
    load_identity,
    save_identity,
)
from insignia.bundle import Bundle
from insignia.keys import KeyType, generate_key
from insignia.server.ca.x509_leaf import build_leaf
from insignia.spiffeid import SpiffeId
from insignia.x509svid import X509Svid
from tests.unit.common import NOW, TD, make_ca

AGENT_ID = SpiffeId.parse("spiffe://example.org/insignia/agent/join_token/t")


def _identity() -> AgentIdentity:
    ca = make_ca()
    key = generate_key(KeyType.EC_P256)
    leaf = build_leaf(key.public_key(), AGENT_ID, timedelta(hours=1), ca, now=NOW)
    bundle = Bundle(TD, (ca.certificate,))
    return AgentIdentity(X509Svid(AGENT_ID, (leaf,), key), bundle, reattestable=False)


def test_svid_and_key_live_in_one_private_file_and_load_back(tmp_path: Path) -> None:
    identity = _identity()
    save_identity(tmp_path, identity)
    path = tmp_path / IDENTITY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert text.startswith("insignia-sealed agent_identity v1 sha256=")
    assert "BEGIN CERTIFICATE" in text and "BEGIN PRIVATE KEY" in text
    assert not [p.name for p in tmp_path.iterdir() if "key" in p.name]  # no separate key file
    loaded = load_identity(tmp_path, TD, NOW + timedelta(minutes=1))
    assert loaded is not None
    assert loaded.spiffe_id == AGENT_ID and loaded.svid.chain == identity.svid.chain
    assert loaded.svid.private_key.public_key() == identity.svid.private_key.public_key()


def test_a_torn_altered_or_foreign_file_is_discarded_with_one_warning(tmp_path: Path) -> None:
    save_identity(tmp_path, _identity())
    path = tmp_path / IDENTITY_FILE
    sealed = path.read_bytes()
    other_td = sealed.replace(b'"trust_domain":"example.org"', b'"trust_domain":"other.org"')
    header, body = other_td.split(b"\n", 1)
    resealed = b"sha256=".join([header.split(b"sha256=")[0], sha256(body).hexdigest().encode()])
    variants = {
        "truncated": sealed[: len(sealed) // 2],
        "checksum": sealed.replace(b"BEGIN PRIVATE KEY", b"BEGIN PRIVATE KEZ"),
        "foreign": resealed + b"\n" + body,
    }
    for name, data in variants.items():
        path.write_bytes(data)
        with capture_logs() as logs:
            assert load_identity(tmp_path, TD, NOW) is None, name
        assert not path.exists(), name  # discarded, so the next start does not trip on it
        assert [e["event"] for e in logs] == ["state_file.discarded"], name
    assert "other.org" in logs[0]["reason"]


def test_forgetting_removes_the_identity_but_keeps_the_bundle(tmp_path: Path) -> None:
    save_identity(tmp_path, _identity())
    forget_identity(tmp_path)
    assert not (tmp_path / IDENTITY_FILE).exists()
    assert load_identity(tmp_path, TD, NOW) is None
    assert any(p.name.startswith("bundle") for p in tmp_path.iterdir())
