"""A peer's bundle endpoint turned hostile, served by a small HTTPS server in this process
on a real socket: each bad answer is refused, the last good bundle stays in force, and the
failure counter on the server's /metrics counts it."""

from __future__ import annotations

import ssl
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from devtools.harness.bundle_peer import Answer, BundlePeer, tls_context
from devtools.harness.server_process import ServerProcess
from devtools.harness.waiting import wait_for
from devtools.harness.web_pki import WebPki, write_web_pki
from insignia.bundle import Bundle
from insignia.keys import KeyType, generate_key, private_key_to_pem
from insignia.server.ca.x509_leaf import build_leaf
from insignia.server.ca.x509ca import SigningAuthority
from insignia.spiffeid import SpiffeId, TrustDomain
from tests.integration.conftest import ServerFactory
from tests.unit.common import WALL_NOW, make_ca

pytestmark = pytest.mark.integration
WEB_PEER = TrustDomain.parse("web-peer.test")
SPIFFE_PEER = TrustDomain.parse("spiffe-peer.test")
ENDPOINT_ID = "spiffe://spiffe-peer.test/endpoint"
FAILURES = "insignia_server_federation_refresh_failures_total"
LAST_FAILURE = "insignia_server_federation_last_failure_timestamp_seconds"
LAST_SUCCESS = "insignia_server_federation_last_success_timestamp_seconds"
DAY = 86400  # the hint the good bundles carry: the loop stays asleep, `refresh` drives


def good_bundle(td: TrustDomain, pem: bytes | None = None) -> Bundle:
    authorities = (
        Bundle.parse_pem(td, pem).x509_authorities
        if pem
        else (make_ca(td, WALL_NOW, timedelta(hours=2)).certificate,)
    )
    return Bundle(td, authorities, sequence=7, refresh_hint=DAY)


def web_context(pki: WebPki, tmp: Path) -> ssl.SSLContext:
    tmp.mkdir(parents=True, exist_ok=True)
    return tls_context(pki.cert_file.read_bytes(), pki.key_file.read_bytes(), str(tmp))


def svid_context(ca: SigningAuthority, spiffe_id: str, tmp: Path) -> ssl.SSLContext:
    """A TLS context serving an X509-SVID for `spiffe_id` signed by `ca`."""
    key = generate_key(KeyType.EC_P256)
    leaf = build_leaf(key.public_key(), SpiffeId.parse(spiffe_id), timedelta(hours=1), ca)
    tmp.mkdir(parents=True, exist_ok=True)
    chain = leaf.public_bytes(serialization.Encoding.PEM)
    return tls_context(chain, private_key_to_pem(key), str(tmp))


def stored(server: ServerProcess, td: TrustDomain) -> Bundle:
    out = server.cli("bundle", "list", "--id", str(td), "--format", "spiffe").stdout
    return Bundle.parse_spiffe(td, out.split("\n", 1)[1])


def failures(server: ServerProcess, td: TrustDomain) -> float:
    return server.metric(FAILURES, {"trust_domain": str(td)}) or 0.0


def refused_refresh(server: ServerProcess, td: TrustDomain, good: Bundle, reason: str) -> None:
    """`federation refresh` fails naming `reason`; the good bundle stays; the failure counts."""
    before = failures(server, td)
    result = server.cli("federation", "refresh", "--trust-domain", str(td), check=False)
    assert result.returncode == 1, result
    line = result.stderr.strip()
    assert "\n" not in line and line.startswith("error: FAILED_PRECONDITION: refresh of"), line
    assert reason in line, line
    assert failures(server, td) >= before + 1
    assert (server.metric(LAST_FAILURE, {"trust_domain": str(td)}) or 0) > 0
    assert stored(server, td) == good


def test_every_bad_answer_is_refused_and_the_last_good_bundle_stays(
    server_factory: ServerFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    web = write_web_pki(tmp_path / "web", ("localhost",))
    untrusted = write_web_pki(tmp_path / "untrusted", ("localhost",))
    monkeypatch.setenv("SSL_CERT_FILE", str(web.ca_file))  # the server's Web PKI roots
    good = good_bundle(WEB_PEER)
    ca = make_ca(SPIFFE_PEER, WALL_NOW, timedelta(hours=2))
    spiffe_ca = ca.certificate.public_bytes(serialization.Encoding.PEM)
    context = svid_context(ca, ENDPOINT_ID, tmp_path / "svid")
    wrong_id = svid_context(ca, "spiffe://spiffe-peer.test/impostor", tmp_path / "wrong")
    spiffe_good = good_bundle(SPIFFE_PEER, spiffe_ca)
    trusted = web_context(web, tmp_path / "web-tls")

    with (
        BundlePeer(trusted, Answer(good.to_spiffe())) as web_peer,
        BundlePeer(context, Answer(spiffe_good.to_spiffe())) as spiffe_peer,
    ):
        server = server_factory()
        ca_file = tmp_path / "spiffe-peer.pem"
        ca_file.write_bytes(spiffe_ca)
        server.cli(
            "federation", "create", "--trust-domain", str(WEB_PEER), "--profile", "https_web",
            "--bundle-endpoint-url", f"https://localhost:{web_peer.port}/bundle",
        )  # fmt: skip
        server.cli(
            "federation", "create", "--trust-domain", str(SPIFFE_PEER),
            "--bundle-endpoint-url", f"https://127.0.0.1:{spiffe_peer.port}/",
            "--endpoint-spiffe-id", ENDPOINT_ID,
            "--trust-domain-bundle", str(ca_file), "--trust-domain-bundle-format", "pem",
        )  # fmt: skip
        wait_for(lambda: server.cli("bundle", "count").stdout.startswith("3 "), 30, "both bundles")
        assert stored(server, WEB_PEER) == good
        assert stored(server, SPIFFE_PEER) == spiffe_good
        assert (server.metric(LAST_SUCCESS, {"trust_domain": str(WEB_PEER)}) or 0) > 0
        assert failures(server, WEB_PEER) == 0

        other_ca = good_bundle(TrustDomain.parse("other.test"))
        huge = b'{"keys": [' + b" " * (10 * 1024 * 1024) + b"]}"
        cases = [
            (Answer(Bundle(WEB_PEER, other_ca.x509_authorities).to_spiffe()), "other.test"),
            (Answer(b'{"keys": []}'), "no x509-svid or jwt-svid keys"),
            (Answer(b'{"keys": [ not json'), "not a SPIFFE bundle"),
            (Answer(huge), "over 1048576 bytes (content-length"),
            (Answer(huge, content_length=False), "bundle is over 1048576 bytes"),
            (Answer(stall=True), "no whole answer within 10 s"),
        ]
        for answer, reason in cases:
            web_peer.answer = answer
            refused_refresh(server, WEB_PEER, good, reason)

        web_peer.answer = Answer(good.to_spiffe())
        web_peer.context = web_context(untrusted, tmp_path / "untrusted-tls")
        refused_refresh(server, WEB_PEER, good, "CERTIFICATE_VERIFY_FAILED")

        spiffe_peer.context = wrong_id
        refused_refresh(
            server,
            SPIFFE_PEER,
            spiffe_good,
            f"presented spiffe://spiffe-peer.test/impostor, expected {ENDPOINT_ID}",
        )

        # Well again: the next refresh succeeds and says so.
        web_peer.context = trusted
        out = server.cli("federation", "refresh", "--trust-domain", str(WEB_PEER)).stdout
        assert out.strip() == (
            "web-peer.test: bundle unchanged (sequence 7, 1 X.509 authority, 0 JWT authorities); "
            f"next refresh in {DAY} s"
        )
