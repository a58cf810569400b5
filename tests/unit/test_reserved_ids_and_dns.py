"""Rules written once and imported by every side: the `/insignia/` ID layout (attestors build
agent IDs, the server recognises them and keeps the space for itself) and DNS labels (the leaf
builder and entry validation)."""

from __future__ import annotations

import pytest

from insignia._dns import is_dns_label, is_dns_name
from insignia.daemon.reserved_ids import agent_spiffe_id, is_agent_id, is_reserved
from insignia.server.entries import InvalidEntry, normalize_dns_name
from insignia.spiffeid import SpiffeId
from tests.unit.common import TD


def test_an_agent_id_built_by_a_plugin_is_recognised_and_reserved() -> None:
    built = agent_spiffe_id(TD, "x509pop", "ab12")
    assert str(built) == "spiffe://example.org/insignia/agent/x509pop/ab12"
    assert is_agent_id(built) and is_reserved(built)


@pytest.mark.parametrize(
    ("path", "agent", "reserved"),
    [
        ("/insignia/server", False, True),
        ("/insignia/other", False, True),
        ("/insignia", False, False),  # the prefix is a folder: /insignia itself is a workload's
        ("/insignia-agent/x", False, False),
        ("/workload", False, False),
    ],
)
def test_which_paths_are_kept(path: str, agent: bool, reserved: bool) -> None:
    spiffe_id = SpiffeId(TD, path)
    assert (is_agent_id(spiffe_id), is_reserved(spiffe_id)) == (agent, reserved)


@pytest.mark.parametrize(
    ("label", "ok"),
    [
        *[("a", True), ("a-b", True), ("A9", True), ("x" * 63, True), ("x" * 64, False)],
        *[("-a", False), ("a-", False), ("", False), ("a_b", False), ("*", False)],
    ],
)
def test_dns_labels(label: str, ok: bool) -> None:
    assert is_dns_label(label) is ok
    # entry validation applies the same rule to each label it normalises
    if ok:
        assert normalize_dns_name(f"{label}.example.org") == f"{label.lower()}.example.org"
    elif label not in ("", "*"):
        with pytest.raises(InvalidEntry, match="label"):
            normalize_dns_name(f"{label}.example.org")


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        *[("*.example.org", True), ("a.*.org", False), ("example.", False)],
        *[(".".join(["x" * 63] * 4), False), (".".join(["x" * 62] * 4), True)],
    ],
)
def test_dns_names(name: str, ok: bool) -> None:
    assert is_dns_name(name) is ok
