"""The OIDC discovery listener, as the server runs it and as `insignia-server oidc serve` does.

It is `insignia.daemon.http.endpoint` (bounded headers, bodies, time and connections) with
the Host check of `OidcDiscovery`; HTTPS with the configured certificate, re-read when its
files change (the bundle endpoint's `WebCertificate`), or plain HTTP where the config allows
it, with a warning at start.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable

import trio
from prometheus_client import CollectorRegistry, Counter, Gauge

from insignia.daemon.config.loading import StartupRefused
from insignia.daemon.http.endpoint import Handler, HostCheck, Response, TlsContext, serve_http
from insignia.daemon.logs import get_logger
from insignia.server.config import OidcDiscoveryConfig
from insignia.server.federation.endpoint import WebCertificate
from insignia.server.oidc.discovery import OidcDiscovery
from insignia.spiffeid import TrustDomain

log = get_logger("insignia.server.oidc")


class OidcMetrics:
    """Requests by route and status, and the keys served, in a daemon's registry."""

    def __init__(self, registry: CollectorRegistry, prefix: str) -> None:
        self.requests = Counter(
            f"{prefix}_oidc_discovery_requests",
            "OIDC discovery requests, by route (discovery, keys, other, host) and status",
            ["route", "code"],
            registry=registry,
        )
        self.keys = Gauge(
            f"{prefix}_oidc_discovery_keys", "JWT signing keys served on /keys", registry=registry
        )

    def observe(self, app: OidcDiscovery) -> tuple[Handler, HostCheck]:
        """`app`'s handler and host check, counting what they answer."""
        self.keys.set_function(lambda: float(docs.key_count) if (docs := app.current()) else 0.0)

        def handle(method: str, path: str) -> Response:
            response = app.handle(method, path)
            self.requests.labels(app.route(path), str(response.status)).inc()
            return response

        def check_host(host: str | None) -> Response | None:
            refusal = app.check_host(host)
            if refusal is not None:
                self.requests.labels("host", str(refusal.status)).inc()
            return refusal

        return handle, check_host


def load_certificate(settings: OidcDiscoveryConfig) -> WebCertificate | None:
    """The HTTPS certificate, None for plain HTTP; StartupRefused when it cannot be used."""
    if settings.cert_file is None or settings.key_file is None:
        return None
    try:
        return WebCertificate(settings.cert_file, settings.key_file, "oidc_discovery")
    except (OSError, ssl.SSLError) as exc:
        detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise StartupRefused(
            "oidc_discovery.cert_file",
            f"{settings.cert_file} with key_file {settings.key_file}: cannot load: {detail}",
        ) from exc


async def serve_oidc_discovery(
    settings: OidcDiscoveryConfig,
    issuer: str,
    trust_domain: TrustDomain,
    published: Callable[[], bytes],
    metrics: OidcMetrics,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the discovery documents on `settings.address` until cancelled; reports the
    bound address like `serve_http`."""
    certificate = load_certificate(settings)
    tls: TlsContext | None = None if certificate is None else certificate.context
    app = OidcDiscovery(issuer, trust_domain, published, settings.domains)
    handle, check_host = metrics.observe(app)
    if tls is None:
        log.warning(
            "oidc_discovery.plain_http",
            address=settings.address,
            detail="serving plain HTTP: relying parties need HTTPS from a proxy in front",
        )
    await serve_http(
        settings.address, handle, tls=tls, host_check=check_host, task_status=task_status
    )
