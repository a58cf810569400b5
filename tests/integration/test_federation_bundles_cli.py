"""`bundle set|list|count|delete` for other trust domains' bundles, and relationships that
the config file declares (refused by update and delete; the config wins on restart), all
through the real CLI against a real server."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from devtools.harness.server_process import ServerProcess
from insignia.bundle import Bundle
from insignia.spiffeid import TrustDomain
from tests.integration.conftest import ServerFactory
from tests.unit.common import WALL_NOW, make_ca

pytestmark = pytest.mark.integration
OTHER = TrustDomain.parse("other.test")
PARENT = "spiffe://example.org/insignia/server"


def ca_pem(td: TrustDomain, path: Path) -> Path:
    ca = make_ca(td, WALL_NOW, timedelta(hours=2))
    path.write_bytes(ca.certificate.public_bytes(serialization.Encoding.PEM))
    return path


def refused(server: ServerProcess, *args: str) -> str:
    """The one line a refused command prints (it must exit 1 or 2, and say `error: `)."""
    result = server.cli(*args, check=False)
    assert result.returncode in (1, 2), result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def federating_entry(server: ServerProcess, path: str) -> str:
    return server.create_entry(
        f"spiffe://example.org{path}", PARENT, ["unix:uid:1000"], "--federates-with", "other.test"
    )


def test_bundle_set_list_count_and_delete_in_each_mode(
    running_server: ServerProcess, tmp_path: Path
) -> None:
    server = running_server
    pem = ca_pem(OTHER, tmp_path / "other.pem")
    out = server.cli("bundle", "set", "--id", "spiffe://other.test", "--path", str(pem))
    assert out.stdout.strip() == "bundle of other.test stored"
    assert server.cli("bundle", "count").stdout.strip() == "2 bundles"
    listed = server.cli("bundle", "list").stdout
    assert listed == "# spiffe://other.test\n" + pem.read_text()
    as_json = server.cli_json("bundle", "list", "--id", "spiffe://other.test")
    assert Bundle.parse_spiffe(OTHER, json.dumps(as_json["other.test"])).x509_pem() == (
        pem.read_bytes()
    )
    # A SPIFFE-format file replaces it (SPIRE's `-format spiffe`).
    spiffe_file = tmp_path / "other.json"
    spiffe_file.write_bytes(Bundle.parse_pem(OTHER, pem.read_bytes()).to_spiffe())
    server.cli(
        "bundle", "set", "--id", "other.test", "--path", str(spiffe_file), "--format", "spiffe"
    )

    # restrict (the default): refused while an entry federates with it.
    first = federating_entry(server, "/one")
    line = refused(server, "bundle", "delete", "--id", "spiffe://other.test")
    assert "FAILED_PRECONDITION" in line and "1 entry federates with it" in line and first in line
    assert server.cli("bundle", "count").stdout.strip() == "2 bundles"

    # dissociate: the entry stays, without the trust domain.
    out = server.cli("bundle", "delete", "--id", "spiffe://other.test", "--mode", "dissociate")
    assert out.stdout.strip() == "deleted the bundle of other.test; 1 entry dissociated"
    shown = server.cli_json("entry", "show", "--id", first)["entries"][0]
    assert shown["federates_with"] == [] and int(shown["revision"]) == 1
    assert server.cli("bundle", "count").stdout.strip() == "1 bundle"
    assert server.cli("bundle", "list").stdout == ""

    # delete: the entries federating with it go with it; others stay.
    server.cli("bundle", "set", "--id", "spiffe://other.test", "--path", str(pem))
    second = federating_entry(server, "/two")
    result = server.cli_json("bundle", "delete", "--id", "other.test", "--mode", "delete")
    assert result == {"trust_domain": "other.test", "entry_ids": [second]}
    assert "NOT_FOUND" in refused(server, "entry", "show", "--id", second)
    assert server.cli_json("entry", "show", "--id", first)["entries"][0]["id"] == first

    # Nothing left to delete.
    assert "NOT_FOUND" in refused(server, "bundle", "delete", "--id", "spiffe://other.test")
    # And an entry may not federate with it any more.
    line = refused(
        server,
        "entry", "create", "--spiffe-id", "spiffe://example.org/three", "--parent-id", PARENT,
        "--selector", "unix:uid:1000", "--federates-with", "other.test",
    )  # fmt: skip
    assert "unknown trust domain" in line


def test_bad_bundle_input_is_refused_with_one_line(
    running_server: ServerProcess, tmp_path: Path
) -> None:
    server = running_server
    pem = ca_pem(OTHER, tmp_path / "other.pem")
    garbage = tmp_path / "garbage"
    garbage.write_text("not a bundle")
    empty = tmp_path / "empty.json"
    empty.write_text('{"keys": []}')
    cases = {
        ("--id", "spiffe://example.org", "--path", str(pem)): "this server's own trust domain",
        ("--id", "spiffe://Other.test", "--path", str(pem)): "INVALID_ARGUMENT",
        ("--id", "spiffe://other.test/path", "--path", str(pem)): "has no path",
        ("--id", "other.test", "--path", str(tmp_path / "missing")): "No such file",
        ("--id", "other.test", "--path", str(garbage)): "INVALID_ARGUMENT: bundle:",
        ("--id", "other.test", "--path", str(pem), "--format", "spiffe"): "INVALID_ARGUMENT",
        ("--id", "other.test", "--path", str(empty), "--format", "spiffe"): "has no keys",
    }
    for args, expected in cases.items():
        line = refused(server, "bundle", "set", *args)
        assert expected in line, (args, line)
    # A CA of another trust domain is not accepted as other.test's.
    line = refused(
        server, "bundle", "set", "--id", "third.test", "--path", str(pem), "--format", "pem"
    )
    assert "other.test" in line
    assert server.cli("bundle", "count").stdout.strip() == "1 bundle"
    line = refused(server, "bundle", "delete", "--id", "example.org")
    assert "this server's own trust domain" in line
    usage = server.cli("bundle", "delete", "--id", "other.test", "--mode", "purge", check=False)
    assert usage.returncode == 2 and "'purge' is not one of" in usage.stderr


def test_a_relationship_of_the_config_file_cannot_be_changed_and_wins_on_restart(
    server_factory: ServerFactory, tmp_path: Path
) -> None:
    server = server_factory()
    pem = ca_pem(OTHER, tmp_path / "other.pem")
    # Created through the API first...
    server.cli(
        "federation", "create", "--trust-domain", "other.test",
        "--bundle-endpoint-url", "https://127.0.0.1:1/api",
        "--endpoint-spiffe-id", "spiffe://other.test/server",
        "--trust-domain-bundle", str(pem), "--trust-domain-bundle-format", "pem",
    )  # fmt: skip
    assert server.cli_json("federation", "show", "--trust-domain", "other.test")[
        "bundle_endpoint_url"
    ] == ("https://127.0.0.1:1/api")
    # ...then declared in the config file: after the restart, the config's is in force.
    server.extra_config = {
        "federation": {
            "federates_with": [
                {
                    "trust_domain": "other.test",
                    "bundle_endpoint_url": "https://127.0.0.1:1/config",
                    "profile": "https_web",
                }
            ]
        }
    }
    server.write_config()
    server.restart()
    shown = server.cli_json("federation", "show", "--trust-domain", "other.test")
    assert shown["bundle_endpoint_url"] == "https://127.0.0.1:1/config"
    assert shown["from_config"] is True and shown["profile"] == "https_web"
    listed = server.cli("federation", "list").stdout
    assert listed.startswith("Found 1 federation relationship\n")
    assert "Declared in         : config file" in listed

    for args in (
        ("update", "--trust-domain", "other.test", "--bundle-endpoint-url", "https://x.test/"),
        ("delete", "--trust-domain", "other.test"),
    ):
        line = refused(server, "federation", *args)
        assert "other.test is declared in the config file" in line, line
    line = refused(server, "bundle", "delete", "--id", "other.test")
    assert "declared in the config file" in line
    assert "ALREADY_EXISTS" not in (
        line := refused(
            server,
            "federation",
            "create",
            "--trust-domain",
            "other.test",
            "--bundle-endpoint-url",
            "https://x.test/",
            "--profile",
            "https_web",
        )
    )
    assert "declared in the config file" in line
    # An entry may federate with it: the config's relationship is a known trust domain.
    server.create_entry(
        "spiffe://example.org/fed", PARENT, ["unix:uid:1000"], "--federates-with", "other.test"
    )
