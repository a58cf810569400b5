"""The daemons' HTTP health and metrics endpoint: /live, /ready and /metrics, served on trio.

/live answers 200 while the process can run a trio task at all. /ready runs the daemon's
readiness check (datastore reachable, CA loaded, ...) on every request and answers 503 with the
reason when it fails, so a load balancer or systemd watchdog sees the real state. /metrics is
the Prometheus text format of the daemon's own `CollectorRegistry` (not the global one, so
tests running two daemons' code in one process do not mix their figures).

The HTTP/1.1 server is `insignia.daemon.http.endpoint` (h11 over trio streams, bounded per
connection), not hypercorn: hypercorn cost the agent about 3 MB of RSS for these three routes.
"""

from __future__ import annotations

from collections.abc import Callable

import trio
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from insignia.daemon.http.endpoint import Response, serve_http
from insignia.daemon.logs import change_log_level, current_log_level

LOG_LEVEL_PATH = "/log-level"


class ReadyNote(str):
    """A readiness answer meaning "ready, but": 200 with the note (the agent serving from
    its disk cache while no server answers is ready for workloads, and says so)."""


ReadinessCheck = Callable[[], str | None]
"""Returns None when ready, a `ReadyNote` when ready with a caveat, else a short reason why
not (sent in the 503 body)."""


class HealthApp:
    """Three GET (and HEAD) routes and nothing else (no framework needed).

    With `log_control` (the agent's private admin socket only, never a TCP listener), also
    GET /log-level (the level in force) and PUT /log-level/<level> (change it at once).
    """

    def __init__(
        self, registry: CollectorRegistry, readiness: ReadinessCheck, log_control: bool = False
    ) -> None:
        self.registry = registry
        self.readiness = readiness
        self.log_control = log_control

    def handle(self, method: str, path: str) -> Response:
        """`respond` as the HTTP server's handler: adds content type, cache-control, allow."""
        status, content_type, body = self.respond(method, path)
        headers = [("content-type", content_type), ("cache-control", "no-store")]
        if status == 405:
            headers.append(("allow", "GET, HEAD"))
        return Response(status, body, headers)

    def respond(self, method: str, path: str) -> tuple[int, str, bytes]:
        """Status, content type and body for one request (pure; the HTTP layer sends it)."""
        text = "text/plain; charset=utf-8"
        if self.log_control and path.startswith(LOG_LEVEL_PATH):
            return self._log_level(method, path, text)
        if method not in ("GET", "HEAD"):
            return 405, text, b"method not allowed\n"
        if path == "/live":
            return 200, text, b"live\n"
        if path == "/ready":
            reason = self.readiness()
            if reason is None:
                return 200, text, b"ready\n"
            if isinstance(reason, ReadyNote):
                return 200, text, f"ready: {reason}\n".encode()
            return 503, text, f"not ready: {reason}\n".encode()
        if path == "/metrics":
            return 200, CONTENT_TYPE_LATEST, generate_latest(self.registry)
        return 404, text, b"not found\n"

    def _log_level(self, method: str, path: str, text: str) -> tuple[int, str, bytes]:
        if method in ("GET", "HEAD") and path == LOG_LEVEL_PATH:
            return 200, text, f"{current_log_level()}\n".encode()
        level = path.removeprefix(LOG_LEVEL_PATH + "/")
        if method != "PUT" or level == path:
            return 405, text, b"method not allowed: GET /log-level or PUT /log-level/<level>\n"
        try:
            return 200, text, f"{change_log_level(level)}\n".encode()
        except ValueError as exc:
            return 400, text, f"{exc}\n".encode()


async def serve_health(
    bind: str,
    registry: CollectorRegistry,
    readiness: ReadinessCheck,
    *,
    log_control: bool = False,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve /live, /ready and /metrics on `bind` until cancelled.

    `bind` is "host:port" (port 0 picks one; "[::1]:80" for IPv6) or "unix:/path". Use with
    `await nursery.start(serve_health, ...)`: it reports the bound "host:port" (the real port
    when 0 was asked), or "unix:/path", once the socket is listening. A readiness check or
    metrics collection that raises is answered 500 and logged; the server keeps serving.
    """
    app = HealthApp(registry, readiness, log_control)
    await serve_http(bind, app.handle, task_status=task_status)
