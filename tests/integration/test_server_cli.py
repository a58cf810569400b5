"""The `insignia-server` CLI against a real server: config errors, entries, tokens, minting,
the bundle, authorization of admin callers and the audit log."""

from __future__ import annotations

import json
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest
from joserfc import jwt as jose_jwt
from joserfc.jwk import KeySet

from devtools.harness.other_uids import as_user, workload_python
from devtools.harness.postgres import Backend
from devtools.harness.server_process import SERVER_BIN, ServerProcess, server_env
from tests.integration.conftest import ServerFactory

pytestmark = pytest.mark.integration


def run_server(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SERVER_BIN), "run", "--config", str(config)],
        capture_output=True,
        text=True,
        env=server_env(),
        timeout=60,
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (None, "cannot read config file: No such file or directory"),
        ('trust_domain = "example.org"\n[agent_api]\nprot = 1\n', "agent_api.prot: unknown key"),
        ('trust_domain = "example.org"\n[ca]\nttl = "soon"\n', "ca.ttl: invalid duration 'soon'"),
        ('trust_domain = "Example.org!"\n', "trust_domain: "),
        ('trust_domain = "example.org"\n[ca]\nkey_type = "dsa"\n', "ca.key_type: "),
        (
            'trust_domain = "example.org"\ndata_dir = "DIR"\n[node_attestors.nope]\n',
            "node_attestors.nope: unknown node attestor 'nope'",
        ),
    ],
)
def test_config_errors_exit_2_with_one_line(
    tmp_path: Path, text: str | None, expected: str
) -> None:
    config = tmp_path / "server.toml"
    if text is not None:
        config.write_text(text.replace("DIR", str(tmp_path / "data")))
    result = run_server(config)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: {config}: ")
    assert expected in lines[0]


def test_help_and_version() -> None:
    for args in (["--help"], ["--version"], ["entry", "create", "--help"]):
        result = subprocess.run(
            [str(SERVER_BIN), *args], capture_output=True, text=True, env=server_env()
        )
        assert result.returncode == 0
    assert (
        "insignia-server, version"
        in subprocess.run(
            [str(SERVER_BIN), "--version"], capture_output=True, text=True, env=server_env()
        ).stdout
    )


def test_entry_lifecycle(server_factory: ServerFactory, backend: Backend, tmp_path: Path) -> None:
    server = server_factory(backend)
    parent = "spiffe://example.org/insignia/agent/join_token/x"
    entry_id = server.create_entry(
        "spiffe://example.org/web",
        parent,
        ["unix:uid:1", "unix:gid:2"],
        "--x509-svid-ttl",
        "600",
        "--dns",
        "web.example.org",
        "--hint",
        "web",
        "--admin",
    )
    shown = server.cli_json("entry", "show", "--id", entry_id)["entries"][0]
    assert shown["selectors"] == ["unix:gid:2", "unix:uid:1"]
    assert (shown["x509_svid_ttl"], shown["hint"], shown["admin"]) == (600, "web", True)
    assert shown["federates_with"] == []  # an unknown trust domain is refused: test_entry_checks
    by_selector = server.cli_json("entry", "show", "--selector", "unix:uid:1")["entries"]
    assert [e["id"] for e in by_selector] == [entry_id]
    assert server.cli_json("entry", "show", "--parent-id", "spiffe://example.org/nope") == {
        "entries": []
    }
    duplicate = server.cli(
        "entry",
        "create",
        "--spiffe-id",
        "spiffe://example.org/web",
        "--parent-id",
        parent,
        "--selector",
        "unix:uid:1",
        "--selector",
        "unix:gid:2",
        check=False,
    )
    assert duplicate.returncode == 1 and "ALREADY_EXISTS" in duplicate.stderr
    updated = server.cli_json(
        "entry", "update", entry_id, "--selector", "unix:uid:3", "--jwt-svid-ttl", "60"
    )
    assert updated["selectors"] == ["unix:uid:3"]
    assert (updated["jwt_svid_ttl"], updated["x509_svid_ttl"]) == (60, 600)
    assert int(updated["revision"]) == int(shown["revision"]) + 1
    bad = server.cli("entry", "update", entry_id, "--x509-svid-ttl", "99999999", check=False)
    assert bad.returncode == 1 and "x509_svid_ttl" in bad.stderr
    assert server.cli_json("entry", "delete", entry_id)["entry"]["id"] == entry_id
    missing = server.cli("entry", "delete", entry_id, check=False)
    assert missing.returncode == 1 and "NOT_FOUND" in missing.stderr
    # a batch is all or nothing
    batch = tmp_path / "entries.json"
    good = {"spiffe_id": "spiffe://example.org/a", "parent_id": parent, "selectors": ["unix:uid:1"]}
    batch.write_text(json.dumps({"entries": [good, {**good, "spiffe_id": "spiffe://other/b"}]}))
    refused = server.cli("entry", "create", "--file", str(batch), check=False)
    assert refused.returncode == 1 and "entries[1].spiffe_id" in refused.stderr
    assert server.cli_json("entry", "show") == {"entries": []}
    batch.write_text(json.dumps([good, {**good, "spiffe_id": "spiffe://example.org/b"}]))
    created = server.cli("entry", "create", "--file", str(batch)).stdout.split()
    assert len(created) == 2 and len(server.cli_json("entry", "show")["entries"]) == 2


def test_mint_bundle_and_independent_verifiers(
    running_server: ServerProcess, tmp_path: Path
) -> None:
    server = running_server
    out = tmp_path / "svid"
    server.cli(
        "x509",
        "mint",
        "--spiffe-id",
        "spiffe://example.org/minted",
        "--ttl",
        "120",
        "--dns",
        "m.example.org",
        "--write",
        str(out),
    )
    assert (out / "svid.key").stat().st_mode & 0o777 == 0o600
    verified = subprocess.run(
        ["openssl", "verify", "-CAfile", str(server.write_bundle()), str(out / "svid.pem")],
        capture_output=True,
        text=True,
    )
    assert verified.returncode == 0, verified.stderr
    text = subprocess.run(
        ["openssl", "x509", "-in", str(out / "svid.pem"), "-noout", "-text"],
        capture_output=True,
        text=True,
    ).stdout
    assert "URI:spiffe://example.org/minted" in text and "DNS:m.example.org" in text
    refused = server.cli("x509", "mint", "--spiffe-id", "spiffe://other.org/x", check=False)
    assert refused.returncode == 1 and "not in trust domain" in refused.stderr

    token = server.cli(
        "jwt",
        "mint",
        "--spiffe-id",
        "spiffe://example.org/minted",
        "--audience",
        "svc-a",
        "--audience",
        "svc-b",
    ).stdout.strip()
    spiffe = json.loads(server.cli("bundle", "show", "--format", "spiffe").stdout)
    # joserfc accepts only RFC 7517 `use` values: drop the SPIFFE one
    jwks = {"keys": [{**k, "use": "sig"} for k in spiffe["keys"] if k["use"] == "jwt-svid"]}
    decoded = jose_jwt.decode(token, KeySet.import_key_set(jwks), algorithms=["ES256"])
    assert decoded.claims["sub"] == "spiffe://example.org/minted"
    assert decoded.claims["aud"] == ["svc-a", "svc-b"]
    assert server.cli("healthcheck").stdout.strip() == "ready"


def test_the_servers_tls_name_is_reserved(running_server: ServerProcess) -> None:
    """An SVID with the DNS name agents check could pose as the server: never issue one."""
    server = running_server
    web = ("spiffe://example.org/web", "spiffe://example.org/insignia/server", ["unix:uid:1"])
    created = server.cli(
        "entry", "create", "--spiffe-id", web[0], "--parent-id", web[1], "--selector", "unix:uid:1",
        "--dns", "insignia-server", check=False,
    )  # fmt: skip
    assert created.returncode == 1 and "reserved" in created.stderr
    entry_id = server.create_entry(*web, "--dns", "web.example.org")
    updated = server.cli("entry", "update", entry_id, "--dns", "Insignia-Server", check=False)
    assert updated.returncode == 1 and "reserved" in updated.stderr
    assert "insignia-server" not in server.cli("entry", "show", "--id", entry_id).stdout.lower()
    for spiffe_id, dns in [
        ("spiffe://example.org/minted", "insignia-server"),
        ("spiffe://example.org/insignia/server", "m.example.org"),
    ]:
        minted = server.cli("x509", "mint", "--spiffe-id", spiffe_id, "--dns", dns, check=False)
        assert minted.returncode == 1 and "INVALID_ARGUMENT" in minted.stderr, minted.stderr


@pytest.mark.root
def test_admin_callers_are_checked_and_audited(server_factory: ServerFactory) -> None:
    """admin_uids works as configured: the server makes the socket reachable (0711 directory,
    0666 socket) and authorizes every call by the caller's uid, auditing refusals."""
    # the operator's part: the socket's parent (/run/insignia) is searchable by everyone
    public = Path(tempfile.mkdtemp(prefix="insignia-admin-"))
    public.chmod(0o755)
    server = server_factory(admin_socket=public / "admin" / "admin.sock")
    python, extra = workload_python()

    def nobody(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*as_user(65534), *python, "-c", "from insignia.server.cli import main; main()", *args,
             "--socket", str(server.admin_socket)],
            capture_output=True,
            text=True,
            env={**server_env(), **extra},
        )  # fmt: skip

    try:
        assert stat.S_IMODE(server.admin_socket.parent.stat().st_mode) == 0o711
        assert stat.S_IMODE(server.admin_socket.stat().st_mode) == 0o666
        private = server.admin_socket.parent / "private"
        assert stat.S_IMODE(private.stat().st_mode) == 0o700  # the internal grpc socket
        refused = nobody("token", "generate")
        assert refused.returncode == 1 and "PERMISSION_DENIED" in refused.stderr
        assert "uid 65534" in refused.stderr
        server.stop()
        server.extra_config = {**server.extra_config, "admin_uids": [65534]}
        server.write_config()
        server.start()
        allowed = nobody("token", "generate")
        assert allowed.returncode == 0, allowed.stderr
    finally:
        shutil.rmtree(public, ignore_errors=True)
    audit = [r for r in server.log_lines() if r.get("event") == "admin call"]
    results = {(r["uid"], r["method"], r["result"]) for r in audit}
    assert (65534, "CreateJoinToken", "PERMISSION_DENIED") in results
    assert (65534, "CreateJoinToken", "OK") in results


def test_metrics_are_served(running_server: ServerProcess) -> None:
    import http.client

    server = running_server
    server.cli("x509", "mint", "--spiffe-id", "spiffe://example.org/m")
    host, port = server.addresses["metrics" if "metrics" in server.addresses else "health"].rsplit(
        ":", 1
    )
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    conn.request("GET", "/metrics")
    body = conn.getresponse().read().decode()
    for name in (
        'insignia_server_svids_signed_total{type="x509"} 1.0',
        "insignia_server_entries",
        'insignia_server_ca_expiry_timestamp_seconds{kind="jwt"}',
        "insignia_server_rpc_duration_seconds",
        "insignia_server_agents_attested",
    ):
        assert name in body, name
