"""`insignia-server console login` and the console's listener, without a browser: who may
mint a login, the certificate served, and config refusals."""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import tempfile
from pathlib import Path

import pytest
from cryptography import x509

from devtools.harness.other_uids import as_user, workload_python
from devtools.harness.server_process import ServerProcess, server_env
from devtools.harness.web_pki import write_web_pki
from tests.integration.conftest import ServerFactory
from tests.integration.test_instances import one_line, run_server

pytestmark = pytest.mark.integration
CONSOLE = {"address": "127.0.0.1:0"}


def served_certificate(server: ServerProcess, cafile: Path) -> x509.Certificate:
    """The console's certificate, verified against `cafile` (its name is not checked)."""
    context = ssl.create_default_context(cafile=str(cafile))
    context.check_hostname = False
    host, port = server.addresses["console"].rsplit(":", 1)
    with (
        socket.create_connection((host, int(port)), timeout=10) as raw,
        context.wrap_socket(raw) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def test_the_console_is_off_unless_configured(running_server: ServerProcess) -> None:
    assert "console" not in running_server.addresses
    refused = running_server.cli("console", "login", check=False)
    assert refused.returncode == 1
    assert refused.stderr.strip() == (
        "error: FAILED_PRECONDITION: the console is off: add a [console] section to the config"
    )


def test_a_login_url_names_the_console_served_with_the_server_svid(
    server_factory: ServerFactory,
) -> None:
    server = server_factory(console=CONSOLE)
    minted = server.cli_json("console", "login")
    assert minted["url"].startswith(f"https://{server.addresses['console']}/login?token=")
    assert minted["url"].split("token=")[1].startswith(minted["session"] + ".")
    certificate = served_certificate(server, server.bundle_path)  # chains to the bundle
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.UniformResourceIdentifier) == [
        "spiffe://example.org/insignia/server"
    ]
    issued = [r for r in server.log_lines() if r.get("event") == "console login issued"]
    assert [r["console_session"] for r in issued] == [minted["session"]]


def test_a_configured_certificate_is_served(server_factory: ServerFactory, tmp_path: Path) -> None:
    pki = write_web_pki(tmp_path / "pki", ("console.example.org",))
    server = server_factory(
        console={**CONSOLE, "cert_file": pki.cert_file, "key_file": pki.key_file}
    )
    certificate = served_certificate(server, pki.ca_file)
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["console.example.org"]


def test_console_config_refusals_are_one_line(
    server_factory: ServerFactory, tmp_path: Path
) -> None:
    half = server_factory(
        name="half", start=False, console={**CONSOLE, "cert_file": tmp_path / "c.pem"}
    )
    assert "cert_file and key_file go together" in one_line(run_server(half))
    missing = server_factory(
        name="missing",
        start=False,
        console={**CONSOLE, "cert_file": tmp_path / "c.pem", "key_file": tmp_path / "k.pem"},
    )
    line = one_line(run_server(missing))
    assert line.startswith("error: ") and "console.cert_file" in line


@pytest.mark.root
def test_only_an_admin_can_mint_a_login(server_factory: ServerFactory) -> None:
    public = Path(tempfile.mkdtemp(prefix="insignia-admin-"))
    public.chmod(0o755)
    server = server_factory(admin_socket=public / "admin" / "admin.sock", console=CONSOLE)
    python, extra = workload_python()
    try:
        refused = subprocess.run(
            [*as_user(65534), *python, "-c", "from insignia.server.cli import main; main()",
             "console", "login", "--socket", str(server.admin_socket)],
            capture_output=True,
            text=True,
            env={**server_env(), **extra},
        )  # fmt: skip
    finally:
        shutil.rmtree(public, ignore_errors=True)
    assert refused.returncode == 1 and "PERMISSION_DENIED" in refused.stderr
    assert "https://" not in refused.stdout
    audit = {
        (r["uid"], r["result"])
        for r in server.log_lines()
        if r.get("event") == "admin call" and r.get("method") == "CreateConsoleLogin"
    }
    assert audit == {(65534, "PERMISSION_DENIED")}
