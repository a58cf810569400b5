"""The agent's own SVID survives a restart, and a crash can never split it from its key."""

from __future__ import annotations

import stat
from datetime import timedelta
from pathlib import Path

from insignia.agent.identity.node_attestation import (
    SVID_FILE,
    AgentIdentity,
    forget_identity,
    load_identity,
    save_identity,
)
from insignia.bundle import Bundle
from insignia.keys import KeyType, generate_key
from insignia.spiffeid import SpiffeId
from insignia.x509svid import X509Svid, build_leaf
from tests.unit.agent.helpers import NOW, TD, make_ca

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
    path = tmp_path / SVID_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert "BEGIN CERTIFICATE" in text and "BEGIN PRIVATE KEY" in text
    assert not [p.name for p in tmp_path.iterdir() if "key" in p.name]  # no separate key file
    loaded = load_identity(tmp_path, TD, NOW + timedelta(minutes=1))
    assert loaded is not None
    assert loaded.spiffe_id == AGENT_ID and loaded.svid.chain == identity.svid.chain
    assert loaded.svid.private_key.public_key() == identity.svid.private_key.public_key()


def test_a_torn_or_mismatched_file_is_refused_cleanly(tmp_path: Path) -> None:
    save_identity(tmp_path, _identity())
    path = tmp_path / SVID_FILE
    pem = path.read_bytes()
    path.write_bytes(pem[: len(pem) // 2])  # what a non-atomic writer could leave behind
    assert load_identity(tmp_path, TD, NOW) is None
    other = _identity()
    path.write_bytes(pem.split(b"-----BEGIN PRIVATE KEY-----")[0] + other.credentials_pem()[1])
    assert load_identity(tmp_path, TD, NOW) is None


def test_forgetting_removes_the_identity_but_keeps_the_bundle(tmp_path: Path) -> None:
    save_identity(tmp_path, _identity())
    forget_identity(tmp_path)
    assert not (tmp_path / SVID_FILE).exists()
    assert load_identity(tmp_path, TD, NOW) is None
    assert any(p.name.startswith("bundle") for p in tmp_path.iterdir())
