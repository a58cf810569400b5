"""The bundle endpoint (SPIFFE Federation §4): our trust bundle as SPIFFE bundle JSON on
`GET /`, over HTTPS with either profile.

https_spiffe serves the server's own X509-SVID (`spiffe://<td>/insignia/server`), renewed
with it; https_web serves the configured certificate and key, re-read when either file
changes. The listener is `insignia.daemon.http.endpoint` (bounded headers, bodies, time and
connections).
"""

from __future__ import annotations

import dataclasses
import os
import ssl
from collections.abc import Callable
from pathlib import Path

from insignia.bundle import Bundle
from insignia.daemon.http.endpoint import Response
from insignia.daemon.logs import get_logger
from insignia.spiffeid import TrustDomain

log = get_logger(__name__)

_JSON = "application/json"
_TEXT = "text/plain; charset=utf-8"


class BundleDocument:
    """`GET /` and nothing else; the document is the published local bundle (whose
    `spiffe_sequence` rises on every change of keys) with our refresh hint."""

    def __init__(
        self, trust_domain: TrustDomain, published: Callable[[], bytes], refresh_hint: int
    ) -> None:
        self.trust_domain = trust_domain
        self.published = published
        self.refresh_hint = refresh_hint
        self._cached: tuple[bytes, bytes] = (b"", b"")

    def document(self) -> bytes | None:
        stored = self.published()
        if not stored:
            return None
        if self._cached[0] != stored:
            bundle = Bundle.parse_spiffe(self.trust_domain, stored)
            served = dataclasses.replace(bundle, refresh_hint=self.refresh_hint).to_spiffe()
            self._cached = (stored, served)
        return self._cached[1]

    def handle(self, method: str, path: str) -> Response:
        if path != "/":
            return Response(404, b"not found\n", [("content-type", _TEXT)])
        if method not in ("GET", "HEAD"):
            return Response(
                405, b"method not allowed\n", [("content-type", _TEXT), ("allow", "GET, HEAD")]
            )
        body = self.document()
        if body is None:
            return Response(503, b"no bundle published yet\n", [("content-type", _TEXT)])
        return Response(200, body, [("content-type", _JSON), ("cache-control", "no-cache")])


def pem_server_context(chain_pem: bytes, key_pem: bytes) -> ssl.SSLContext:
    """A TLS 1.2+ server context from PEM in memory (an anonymous memfd: the key never
    reaches a file system)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    fd = os.memfd_create("insignia-tls", os.MFD_CLOEXEC)
    try:
        os.write(fd, key_pem + b"\n" + chain_pem)
        context.load_cert_chain(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)
    return context


class WebCertificate:
    """The https_web certificate and key files, loaded again when either one changes; a
    change that fails to load is logged and the last good pair kept. `log_prefix` names the
    listener in those log events."""

    def __init__(self, cert_file: Path, key_file: Path, log_prefix: str = "federation") -> None:
        self.cert_file, self.key_file = cert_file, key_file
        self.log_prefix = log_prefix
        self._stamp = self._files_stamp()
        self._context = self._load()  # a bad pair at start stops the server (caller)

    def _files_stamp(self) -> tuple[tuple[int, int, int], ...]:
        stats = (os.stat(p) for p in (self.cert_file, self.key_file))
        return tuple((s.st_ino, s.st_mtime_ns, s.st_size) for s in stats)

    def _load(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.cert_file, self.key_file)
        return context

    def context(self) -> ssl.SSLContext:
        try:
            stamp = self._files_stamp()
            if stamp != self._stamp:
                self._stamp = stamp  # a bad pair is reported once, not on every connection
                self._context = self._load()
                log.info(
                    f"{self.log_prefix}.web_certificate_reloaded", cert_file=str(self.cert_file)
                )
        except (OSError, ssl.SSLError) as exc:
            log.warning(
                f"{self.log_prefix}.web_certificate_unusable",
                cert_file=str(self.cert_file),
                error=str(exc),
            )
        return self._context
