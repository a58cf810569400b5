"""The bundle endpoint as real HTTPS clients see it: curl and openssl s_client, over both
profiles (SPIFFE Federation §4 and §5)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from cryptography import x509

from devtools.harness.federated_pair import endpoint_port
from devtools.harness.server_process import SERVER_BIN
from devtools.harness.waiting import wait_for
from devtools.harness.web_pki import write_web_pki
from insignia.bundle import Bundle
from insignia.spiffeid import TrustDomain
from insignia.x509svid import leaf_spiffe_id
from tests.integration.conftest import ServerFactory

pytestmark = pytest.mark.integration


def curl(
    url: str, port: int, host: str, ca_file: Path, *extra: str
) -> subprocess.CompletedProcess[str]:
    """curl resolving `host` to 127.0.0.1, trusting only `ca_file`; -i: headers too."""
    return subprocess.run(
        [
            "curl",
            "-sS",
            "-i",
            "--max-time",
            "10",
            "--cacert",
            str(ca_file),
            "--resolve",
            f"{host}:{port}:127.0.0.1",
            *extra,
            url,
        ],
        capture_output=True,
        text=True,
        timeout=20,
    )


def split_response(text: str) -> tuple[str, dict[str, str], str]:
    head, _, body = text.replace("\r\n", "\n").partition("\n\n")
    status, *lines = head.splitlines()
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return status, headers, body


def presented_leaf(port: int) -> x509.Certificate:
    out = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-showcerts"],
        input="",
        capture_output=True,
        text=True,
        timeout=20,
    ).stdout
    return x509.load_pem_x509_certificates(out.encode())[0]


def test_https_spiffe_serves_the_bundle_with_the_server_svid(
    server_factory: ServerFactory,
) -> None:
    server = server_factory(
        trust_domain="a.test",
        federation={"bundle_endpoint": {"address": "127.0.0.1:0", "refresh_hint": "45s"}},
    )
    port = endpoint_port(server)
    leaf = presented_leaf(port)
    assert str(leaf_spiffe_id(leaf)) == "spiffe://a.test/insignia/server"
    ca_file = server.write_bundle()
    # curl verifies the SVID chain against the trust domain's bundle (the DNS SAN is the
    # server's fixed TLS name).
    result = curl(f"https://insignia-server:{port}/", port, "insignia-server", ca_file)
    assert result.returncode == 0, result.stderr
    status, headers, body = split_response(result.stdout)
    assert " 200" in status
    assert headers["content-type"] == "application/json"
    assert headers["cache-control"] == "no-cache"
    doc = json.loads(body)
    assert doc["spiffe_refresh_hint"] == 45
    assert doc["spiffe_sequence"] >= 1
    assert {k["use"] for k in doc["keys"]} == {"x509-svid", "jwt-svid", "wit-svid"}
    bundle = Bundle.parse_spiffe(TrustDomain.parse("a.test"), body)
    assert bundle.x509_pem() == ca_file.read_bytes()

    # A change of keys raises the sequence the endpoint serves.
    server.cli_json("authority", "x509", "prepare")

    def sequence() -> int:
        out = curl(f"https://insignia-server:{port}/", port, "insignia-server", ca_file)
        return int(json.loads(split_response(out.stdout)[2])["spiffe_sequence"])

    wait_for(lambda: sequence() > doc["spiffe_sequence"], 10, "a higher spiffe_sequence")

    missing = curl(f"https://insignia-server:{port}/other", port, "insignia-server", ca_file)
    assert " 404" in split_response(missing.stdout)[0]
    posted = curl(
        f"https://insignia-server:{port}/", port, "insignia-server", ca_file, "-X", "POST"
    )
    assert " 405" in split_response(posted.stdout)[0]


def test_https_web_serves_the_configured_certificate(
    server_factory: ServerFactory, tmp_path: Path
) -> None:
    pki = write_web_pki(tmp_path / "pki", ("bundles.a.test",))
    server = server_factory(
        trust_domain="a.test",
        federation={
            "bundle_endpoint": {
                "address": "127.0.0.1:0",
                "profile": "https_web",
                "cert_file": str(pki.cert_file),
                "key_file": str(pki.key_file),
            }
        },
    )
    port = endpoint_port(server)
    result = curl(f"https://bundles.a.test:{port}/", port, "bundles.a.test", pki.ca_file)
    assert result.returncode == 0, result.stderr
    doc = json.loads(split_response(result.stdout)[2])
    assert doc["spiffe_refresh_hint"] == 300
    # Web PKI only: the server's own CA does not vouch for this endpoint.
    refused = curl(f"https://bundles.a.test:{port}/", port, "bundles.a.test", server.write_bundle())
    assert refused.returncode != 0

    # New files are picked up on the next connection, without a restart.
    renewed = write_web_pki(tmp_path / "pki2", ("bundles.a.test",))
    pki.key_file.write_bytes(renewed.key_file.read_bytes())
    pki.cert_file.write_bytes(renewed.cert_file.read_bytes())
    again = curl(f"https://bundles.a.test:{port}/", port, "bundles.a.test", renewed.ca_file)
    assert again.returncode == 0, again.stderr


def test_https_web_without_a_certificate_is_refused_at_load(
    server_factory: ServerFactory,
) -> None:
    server = server_factory(
        start=False,
        federation={"bundle_endpoint": {"address": "127.0.0.1:0", "profile": "https_web"}},
    )
    result = subprocess.run(
        [str(SERVER_BIN), "run", "--config", str(server.config_path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "https_web needs cert_file and key_file" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
