"""The daemons' HTTP health and metrics endpoint: /live, /ready and /metrics, served on trio.

/live answers 200 while the process can run a trio task at all. /ready runs the daemon's
readiness check (datastore reachable, CA loaded, ...) on every request and answers 503 with the
reason when it fails, so a load balancer or systemd watchdog sees the real state. /metrics is
the Prometheus text format of the daemon's own `CollectorRegistry` (not the global one, so
tests running two daemons' code in one process do not mix their figures).
"""

from __future__ import annotations

from collections.abc import Callable

import trio
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from insignia.asgi import HttpApp, Scope, Send, respond, serve_asgi

ReadinessCheck = Callable[[], str | None]
"""Returns None when ready, else a short reason why not (sent in the 503 body)."""


class HealthApp(HttpApp):
    """A minimal ASGI app: three GET routes and nothing else (no framework needed)."""

    def __init__(self, registry: CollectorRegistry, readiness: ReadinessCheck) -> None:
        self.registry = registry
        self.readiness = readiness

    async def handle(self, scope: Scope, send: Send) -> None:
        status, content_type, body = self.respond(scope["method"], scope["path"])
        await respond(send, status, body, content_type, [(b"cache-control", b"no-store")])

    def respond(self, method: str, path: str) -> tuple[int, str, bytes]:
        """Status, content type and body for one request (pure; the ASGI layer sends it)."""
        text = "text/plain; charset=utf-8"
        if method not in ("GET", "HEAD"):
            return 405, text, b"method not allowed\n"
        if path == "/live":
            return 200, text, b"live\n"
        if path == "/ready":
            reason = self.readiness()
            if reason is None:
                return 200, text, b"ready\n"
            return 503, text, f"not ready: {reason}\n".encode()
        if path == "/metrics":
            return 200, CONTENT_TYPE_LATEST, generate_latest(self.registry)
        return 404, text, b"not found\n"


async def serve_health(
    bind: str,
    registry: CollectorRegistry,
    readiness: ReadinessCheck,
    *,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve /live, /ready and /metrics on `bind` ("host:port", port 0 picks one) until cancelled.

    Use with `await nursery.start(serve_health, ...)`: it reports the bound "host:port" (the
    real port when 0 was asked) once the socket is listening.
    """
    await serve_asgi(HealthApp(registry, readiness), bind, task_status=task_status)
