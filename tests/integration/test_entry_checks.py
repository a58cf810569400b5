"""`entry create` refuses selectors no installed attestor emits, and a --federates-with
naming a trust domain the server neither federates with nor holds a bundle of."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from devtools.harness.server_process import ServerProcess

PARENT = "spiffe://example.org/node"


def _create(server: ServerProcess, *args: str) -> tuple[int, str]:
    result = server.cli(
        "entry", "create", "--spiffe-id", "spiffe://example.org/w", "--parent-id", PARENT,
        *args, check=False,
    )  # fmt: skip
    return result.returncode, result.stderr


@pytest.mark.parametrize(
    ("selector", "problem"),
    [
        ("colour:red", "unknown selector type 'colour'"),
        ("unix:colour:red", "unix has no key 'colour'"),
        ("unix:uid:", "empty value for unix:uid"),
        ("docker:label", "empty value for docker:label"),
    ],
)
def test_bad_selectors_are_refused_with_what_is_understood(
    running_server: ServerProcess, selector: str, problem: str
) -> None:
    code, stderr = _create(running_server, "--selector", "unix:gid:1", "--selector", selector)
    assert code == 2, stderr
    assert len(stderr.strip().splitlines()) == 1
    assert problem in stderr and repr(selector) in stderr
    for understood in ("unix:{gid|", "uid|user}", "docker:{env|image_id|label}", "systemd:"):
        assert understood in stderr
    assert running_server.cli("entry", "count").stdout.strip() == "0 registration entries"


def test_selectors_of_every_builtin_attestor_are_accepted(running_server: ServerProcess) -> None:
    good = [
        "unix:uid:1001",
        "unix:path:/usr/bin/python3",
        "docker:label:app:web",
        "systemd:id:web.service",
        "container:id:abc",
        "k8s:pod-uid:1234",
        "x509pop:san:dns:node1.example.org",
        "sshpop:principal:node1",
    ]
    for i, selector in enumerate(good):
        result = running_server.cli(
            "entry", "create", "--spiffe-id", f"spiffe://example.org/w{i}", "--parent-id", PARENT,
            "--selector", selector, check=False,
        )  # fmt: skip
        assert result.returncode == 0, (selector, result.stderr)


def test_file_entries_are_checked_too(running_server: ServerProcess, tmp_path: Path) -> None:
    path = tmp_path / "entries.json"
    good = {"spiffe_id": "spiffe://example.org/a", "parent_id": PARENT, "selectors": ["unix:uid:1"]}
    bad = {**good, "spiffe_id": "spiffe://example.org/b", "selectors": ["unix:uid:"]}
    path.write_text(json.dumps({"entries": [good, bad]}))
    result = running_server.cli("entry", "create", "--file", str(path), check=False)
    assert result.returncode == 2 and "entries[1]" in result.stderr and "unix:uid" in result.stderr
    assert running_server.cli("entry", "count").stdout.strip() == "0 registration entries"


def test_federates_with_an_unknown_trust_domain_is_refused(running_server: ServerProcess) -> None:
    code, stderr = _create(
        running_server, "--selector", "unix:uid:1", "--federates-with", "other.org"
    )
    assert code != 0 and "'other.org'" in stderr
    assert "unknown trust domain" in stderr and len(stderr.strip().splitlines()) == 1
    entry_id = running_server.create_entry("spiffe://example.org/w", PARENT, ["unix:uid:1"])
    update = running_server.cli(
        "entry", "update", entry_id, "--federates-with", "other.org", check=False
    )
    assert update.returncode != 0 and "no federation relationship" in update.stderr
