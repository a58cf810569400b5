"""SVID files for legacy software: real nginx serves mTLS from the files `insignia-agent helper`
keeps current, and picks up a CA rotation through its reload command.

Identities follow uids: the helper and nginx run as UID_A (entry `/nginx`, with a DNS name so
curl verifies the hostname for real), the curl client's SVID is fetched as UID_B (`/client`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from devtools.harness.agent_clients import UID_A, UID_B, agent_cli, register
from devtools.harness.agent_process import AGENT_BIN, AgentProcess
from devtools.harness.other_uids import as_user
from devtools.harness.server_process import ServerProcess
from devtools.harness.waiting import wait_for
from insignia.keys import KeyType, generate_key, private_key_to_pem
from insignia.server.ca.x509_leaf import build_leaf
from insignia.server.ca.x509ca import build_root_ca
from insignia.spiffeid import SpiffeId, TrustDomain
from tests.integration.nginx_process import NGINX_BIN, NginxProcess

pytestmark = [pytest.mark.integration, pytest.mark.root]

HOST = "nginx.example.org"
_PEM = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)


OwnedDir = Callable[[int], Path]


@pytest.fixture
def owned_dir() -> Iterator[OwnedDir]:
    """`make(uid)` -> a fresh 0700 directory under /tmp owned by `uid` (pytest's tmp_path is
    not reachable by other uids)."""
    made: list[Path] = []

    def make(uid: int) -> Path:
        path = Path(tempfile.mkdtemp(prefix="insignia-svid-files-"))
        os.chown(path, uid, uid)
        made.append(path)
        return path

    yield make
    for path in made:
        shutil.rmtree(path, ignore_errors=True)


class Helper:
    """`insignia-agent helper` as a separate process under `uid`, logging JSON to a file."""

    def __init__(self, log_path: Path, uid: int, *args: str) -> None:
        self.log_path = log_path
        with open(log_path, "wb") as log:
            self.process = subprocess.Popen(
                [*as_user(uid), str(AGENT_BIN), "helper", "--log-format", "json", *args],
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def events(self, name: str) -> list[dict[str, Any]]:
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if record.get("event") == name:
                    out.append(record)
        return out

    def alive(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(
                f"helper exited with {self.process.returncode}:\n{self.log_path.read_text()}"
            )
        return True

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(30)


def leaf_of(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem)


def served_certificate(port: int) -> x509.Certificate | None:
    """The leaf nginx presents, as `openssl s_client` sees it (None if the handshake failed)."""
    result = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", HOST],
        input=b"",
        capture_output=True,
        timeout=30,
    )
    match = _PEM.search(result.stdout)
    return leaf_of(match.group(0)) if match else None


def curl(
    port: int, cacert: Path, cert: Path | None = None, key: Path | None = None
) -> tuple[str, str]:
    """(HTTP status or curl's error, body) for GET https://nginx.example.org:port/."""
    args = [
        "curl",
        "-sS",
        "--max-time",
        "20",
        "--resolve",
        f"{HOST}:{port}:127.0.0.1",
        "--cacert",
        str(cacert),
        "-w",
        "\n%{http_code}",
    ]
    if cert is not None and key is not None:
        args += ["--cert", str(cert), "--key", str(key)]
    result = subprocess.run(
        [*args, f"https://{HOST}:{port}/"], capture_output=True, text=True, timeout=30
    )
    body, _, status = result.stdout.rpartition("\n")
    return (
        status if result.returncode == 0 else f"curl exit {result.returncode}: {result.stderr}"
    ), body


def rotate_x509_authority(server: ServerProcess) -> None:
    """Prepare and activate a new X.509 CA, then taint the old one: agents re-sign at once."""
    old = server.cli_json("authority", "x509", "show")["authorities"]
    active = [a["authority_id"] for a in old if a["state"] == "active"]
    server.cli("authority", "x509", "prepare")
    server.cli("authority", "x509", "activate")
    for authority_id in active:
        server.cli("authority", "x509", "taint", authority_id)


def issuer_key_id(cert: x509.Certificate) -> bytes | None:
    return cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier


def fetch_client_files(agent: AgentProcess, directory: Path) -> tuple[Path, Path, Path]:
    fetched = agent_cli(
        "api",
        "fetch",
        "x509",
        "--socket",
        str(agent.socket_path),
        "--write",
        str(directory),
        uid=UID_B,
    )
    assert fetched.returncode == 0, fetched.stderr
    return directory / "svid.0.pem", directory / "svid.0.key", directory / "bundle.0.pem"


@pytest.mark.timeout(300)
def test_nginx_mtls(
    running_server: ServerProcess,
    running_agent: AgentProcess,
    owned_dir: OwnedDir,
    tmp_path: Path,
) -> None:
    """nginx serves mTLS from helper files through CA rotations and an agent restart.

    (A short name on purpose: the server's admin socket lives under tmp_path, and a long
    test name pushes that path past the 107-byte AF_UNIX limit under xdist.)
    """
    if not Path(NGINX_BIN).exists():
        if os.environ.get("CI") == "true":
            pytest.fail("nginx is missing: run `make sysdeps`")
        pytest.skip("nginx is not installed (make sysdeps)")
    td = running_server.trust_domain
    register(running_server, running_agent, "/nginx", f"unix:uid:{UID_A}", extra=("--dns", HOST))
    register(running_server, running_agent, "/client", f"unix:uid:{UID_B}")

    certs, nginx_dir, client_dir = owned_dir(UID_A), owned_dir(UID_A), owned_dir(UID_B)
    nginx = NginxProcess(nginx_dir, certs, HOST, uid=UID_A)
    helper = Helper(
        tmp_path / "helper.log",
        UID_A,
        "--write-dir",
        str(certs),
        "--socket",
        running_agent.endpoint,
        "--reload-command",
        shlex.join(nginx.reload_argv),
    )
    try:
        # First write: nginx is not running yet, so its reload fails; the helper carries on.
        wait_for(
            lambda: helper.alive() and bool(helper.events("svid_files.reload_failed")),
            60,
            "the helper's first write and its (failing) reload",
        )
        names = ("svid.pem", "svid_key.pem", "bundle.pem")  # symlinks into .insignia-svid
        modes = {n: (certs / n).stat().st_mode & 0o777 for n in names}
        assert modes == {"svid.pem": 0o644, "svid_key.pem": 0o600, "bundle.pem": 0o644}
        assert {(certs / n).stat().st_uid for n in names} == {UID_A}
        first = leaf_of((certs / "svid.pem").read_bytes())
        nginx_id = x509.UniformResourceIdentifier(f"spiffe://{td}/nginx")
        sans = first.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert nginx_id in sans and x509.DNSName(HOST) in sans

        nginx.start()
        served = served_certificate(nginx.port)
        assert served is not None and served.serial_number == first.serial_number

        # Another workload's SVID, verified against the bundle nginx was given: 200.
        cert, key, bundle = fetch_client_files(running_agent, client_dir)
        status, body = curl(nginx.port, bundle, cert, key)
        assert status == "200", (status, body)
        verified, _, serial = body.partition(" serial=")
        assert verified == "verify=SUCCESS", body
        assert int(serial, 16) == leaf_of(cert.read_bytes()).serial_number, body

        # Same trust domain name, same SPIFFE ID, another CA: refused. No certificate: refused.
        impostor_ca = build_root_ca(
            TrustDomain.parse(td), generate_key(KeyType.EC_P256), timedelta(hours=1)
        )
        impostor_key = generate_key(KeyType.EC_P256)
        impostor = build_leaf(
            impostor_key.public_key(),
            SpiffeId.parse(f"spiffe://{td}/client"),
            timedelta(hours=1),
            impostor_ca,
        )
        (tmp_path / "impostor.pem").write_bytes(impostor.public_bytes(Encoding.PEM))
        (tmp_path / "impostor.key").write_bytes(private_key_to_pem(impostor_key))
        status, body = curl(
            nginx.port, bundle, tmp_path / "impostor.pem", tmp_path / "impostor.key"
        )
        assert status == "400" and "SSL certificate error" in body, (status, body)
        status, body = curl(nginx.port, bundle)
        assert status == "400" and "No required SSL certificate" in body, (status, body)

        # Forced rotation: a new CA, the old one tainted. The helper rewrites the files and
        # reloads nginx, which then serves the new certificate.
        reloads_before = len(helper.events("svid_files.reload_ok"))
        rotate_x509_authority(running_server)

        def serving_new_certificate(previous: x509.Certificate) -> bool:
            """Files hold an SVID from a newer CA than `previous`, and nginx, done reloading,
            serves it."""
            helper.alive()  # raises, with the helper's log, if it died
            on_disk = leaf_of((certs / "svid.pem").read_bytes())
            if issuer_key_id(on_disk) == issuer_key_id(previous) or not nginx.settled():
                return False
            now_served = served_certificate(nginx.port)
            return now_served is not None and now_served.serial_number == on_disk.serial_number

        wait_for(lambda: serving_new_certificate(first), 90, "nginx to serve the rotated SVID")
        assert len(helper.events("svid_files.reload_ok")) > reloads_before
        rotated = leaf_of((certs / "svid.pem").read_bytes())
        assert len(x509.load_pem_x509_certificates((certs / "bundle.pem").read_bytes())) >= 2

        # The client's old bundle cannot verify nginx's new certificate; with the refreshed
        # bundle, both its old SVID (tainted CA, still in nginx's bundle) and its re-signed
        # one get in.
        assert curl(nginx.port, bundle, cert, key)[0].startswith("curl exit 60")
        new_cert, new_key, new_bundle = fetch_client_files(running_agent, owned_dir(UID_B))
        assert curl(nginx.port, new_bundle, cert, key)[0] == "200"
        assert curl(nginx.port, new_bundle, new_cert, new_key)[0] == "200"

        # The agent restarts: the helper loses its stream, reconnects with backoff, and the
        # next rotation still reaches nginx.
        running_agent.stop()
        wait_for(
            lambda: helper.alive() and bool(helper.events("svid_files.retrying")),
            30,
            "the helper to notice the agent is gone",
        )
        running_agent.start()
        rotate_x509_authority(running_server)
        wait_for(
            lambda: serving_new_certificate(rotated), 90, "nginx to serve the next rotated SVID"
        )
    finally:
        nginx.stop()
        exit_code = helper.stop()
    assert exit_code == 0, helper.log_path.read_text()
