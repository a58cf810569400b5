"""The `[console]` listener: the console app on the hardened HTTP server, over HTTPS with the
server's own X509-SVID or a configured certificate, and the login minter the admin API's
`CreateConsoleLogin` calls."""

from __future__ import annotations

import socket
from functools import partial

import trio
from insignia_proto import admin_pb2

from insignia.daemon.config.addresses import parse_host_port
from insignia.daemon.http.endpoint import Limits, TlsContext, serve_app
from insignia.server.admin.api import AdminApi
from insignia.server.config import ConsoleConfig
from insignia.server.console.app import ConsoleHttp, Renderer
from insignia.server.console.events import MAX_STREAMS, EventHub
from insignia.server.console.sessions import Sessions
from insignia.server.console.views import ConsoleViews
from insignia.server.core import ServerCore

# Pages make admin API and datastore calls: more time than the health endpoint's 10 s, room
# for the live event streams beside the page loads.
LIMITS = Limits(idle_timeout=30.0, max_connections=MAX_STREAMS + 32, max_body_bytes=64 * 1024)


def base_url(address: str) -> str:
    """The URL operators open for a bound "host:port": a wildcard address is named by this
    host's name (which its certificate may or may not carry)."""
    _family, host, port = parse_host_port(address)
    if host in ("0.0.0.0", "::"):
        host = socket.getfqdn()
    return f"https://{f'[{host}]' if ':' in host else host}:{port}"


async def serve_console(
    core: ServerCore,
    admin: AdminApi,
    config: ConsoleConfig,
    tls: TlsContext,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    sessions = Sessions(config.login_ttl, config.session_ttl, core.clock)
    hub = EventHub()
    renderer = Renderer(str(core.trust_domain))
    pages, actions = ConsoleViews(core, admin, sessions, renderer, hub).routes()
    http = ConsoleHttp(sessions, renderer, hub, pages, actions)
    async with trio.open_nursery() as nursery:
        address = await nursery.start(
            partial(serve_app, limits=LIMITS, tls=tls), config.address, http.handle
        )
        url = base_url(address)

        def mint(uid: int) -> admin_pb2.ConsoleLogin:
            token, name, expires_at = sessions.mint_login(uid)
            return admin_pb2.ConsoleLogin(
                url=f"{url}/login?token={token}",
                expires_at=int(expires_at.timestamp()),
                session=name,
            )

        admin.console_login = mint
        core.on_changes = hub.publish
        task_status.started(address)
