"""`insignia-server run`: one trio nursery (a guest of asyncio, for grpc.aio) whose children are
the agent API, the admin API, health and metrics, CA rotation, the change-log follower and
signal handling. SIGHUP is logged and ignored, as by the agent. SIGTERM or SIGINT cancels the
nursery: listeners stop, in-flight RPCs get a short grace period, the datastore closes.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import signal
import socket
import ssl
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import trio
from insignia_proto import agent_pb2_grpc
from sqlalchemy.engine import make_url

from insignia.attestors.interface import ServerEnvironment
from insignia.attestors.registry import load_node_attestor_servers
from insignia.daemon.config.loading import StartupRefused, refused_for_key
from insignia.daemon.files import atomic_write, ensure_data_dir, ensure_private_dir
from insignia.daemon.http.endpoint import TlsContext, serve_http
from insignia.daemon.http.health import serve_health
from insignia.daemon.instance import DataDirLock, claim_socket_path, lock_data_dir, lock_path
from insignia.daemon.keepalive import SERVER_OPTIONS
from insignia.daemon.logs import get_logger
from insignia.daemon.peercred.credentials import CallerTable
from insignia.daemon.peercred.grpc_server import serve_grpc_with_peercred
from insignia.daemon.runtime import call_asyncio, open_trio_bridge
from insignia.daemon.systemd_notify import sd_notify
from insignia.server.admin.api import AdminApi, admin_handlers
from insignia.server.agentapi.api import AgentApi
from insignia.server.agentapi.tls import DynamicCredentials, ServerIdentity, issue_server_identity
from insignia.server.ca.authorities import Authorities
from insignia.server.ca.keymanager import key_manager
from insignia.server.ca.state import CaSettings, UpstreamError, load_upstream
from insignia.server.config import ConsoleConfig, ServerConfig
from insignia.server.core import JoinTokens, ServerCore
from insignia.server.datastore.errors import DatastoreUnavailable
from insignia.server.datastore.listen import RECONNECT, ChangeListener
from insignia.server.datastore.records import ServerRecord
from insignia.server.datastore.store import Datastore
from insignia.server.federation.endpoint import BundleDocument, WebCertificate, pem_server_context
from insignia.server.federation.refresher import Refreshers
from insignia.server.federation.relationship import configured_relationships
from insignia.server.metrics import ServerMetrics
from insignia.server.oidc.listener import OidcMetrics, serve_oidc_discovery
from insignia.server.registry import load_or_create_server_id

log = get_logger("insignia.server")
ADDRESSES_FILE = "server.addresses.json"
SERVER_SVID_TTL = timedelta(hours=1)
# No SO_REUSEPORT (grpc's default): a second server on these ports must fail, not split the
# agents between two CAs.
NO_REUSEPORT = ("grpc.so_reuseport", 0)
GRPC_OPTIONS = [
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    *SERVER_OPTIONS,
    NO_REUSEPORT,
]
# The attestation port needs no client certificate: keep what anyone can send there small.
# Attestor payloads (an x509pop chain, a token) are a few KiB.
ATTESTATION_MAX_MESSAGE = 64 * 1024
ATTESTATION_GRPC_OPTIONS = [
    ("grpc.max_receive_message_length", ATTESTATION_MAX_MESSAGE),
    ("grpc.max_concurrent_streams", 16),  # per connection
    ("grpc.server_handshake_timeout_ms", 10_000),
    NO_REUSEPORT,
]


def open_core(config: ServerConfig, config_path: Path) -> ServerCore:
    """Check the node attestors' config, open the datastore and the CA (blocking)."""
    data_dir = config.data_dir  # made and locked by run_daemon
    upstream = None
    if config.ca.upstream:
        cert_file, key_file = config.ca.upstream.cert_file, config.ca.upstream.key_file
        try:
            upstream = load_upstream(cert_file, key_file)
        except UpstreamError as exc:
            key = "ca.upstream.key_file" if exc.path == key_file else "ca.upstream.cert_file"
            raise StartupRefused(key, f"{exc.path}: {exc.reason}") from exc
    settings = CaSettings(
        config.td, config.ca.key_type, config.jwt_key_type, config.ca.ttl, upstream
    )
    tokens = JoinTokens()
    env = ServerEnvironment(config.td, token_store=tokens)
    # Plugins first: a config error there must stop us before anything is opened or logged.
    attestors = load_node_attestor_servers(config.node_attestors, env, source=config_path)
    store = open_datastore(config.database_url)
    try:
        check_trust_domain(store, config)
    except BaseException:
        store.close()
        raise
    tokens.store = store
    instance_id = load_or_create_server_id(data_dir)
    keys = key_manager(config.ca.key_manager, data_dir)
    authorities = Authorities(settings, keys, store, server_id=instance_id)
    core = ServerCore(
        config, store, authorities, ServerMetrics(), attestors=attestors, instance_id=instance_id
    )
    for warning in config.ttl_warnings():
        log.warning("svid ttl exceeds ca guarantee", detail=warning)
    return core


def open_datastore(url: str) -> Datastore:
    """The datastore, or a refusal naming `database.url` (password hidden) and the cause."""
    try:
        return Datastore.open(url)
    except DatastoreUnavailable as exc:
        cause = " ".join(str(exc).splitlines()[0].split())
        raise StartupRefused("database.url", f"{_shown_url(url)}: cannot connect: {cause}") from exc


def _shown_url(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


def check_trust_domain(store: Datastore, config: ServerConfig) -> None:
    """One database, one deployment: refuse a database another trust domain recorded."""
    recorded = store.claim_trust_domain(config.td)
    if recorded != config.td:
        raise StartupRefused(
            "trust_domain",
            f"{config.td} differs from {recorded}, the trust domain of the database "
            f"{_shown_url(config.database_url)}; one database serves one trust domain",
        )


def _lock_sqlite(url: str) -> DataDirLock | None:
    """SQLite is the embedded single-server datastore: a second server on the same file
    (another data_dir, the same database.url) refuses to start. PostgreSQL: no lock."""
    parsed = make_url(url)
    if not parsed.drivername.startswith("sqlite") or not parsed.database:
        return None
    path = Path(parsed.database)
    if not path.parent.is_dir():
        return None  # Datastore.open names the missing directory
    return lock_path(
        path.with_name(path.name + ".lock"),
        "database.url",
        lambda holder: (
            f"{path} is in use by another server (pid {holder}); SQLite serves one "
            "server only: give this server its own database, or share PostgreSQL (docs/ha.md)"
        ),
    )


class _ServerTls:
    """The server SVID and the two listeners' credentials, renewed at half life."""

    def __init__(self, core: ServerCore) -> None:
        self.core = core
        self.identity = self._issue()
        self._endpoint: tuple[ServerIdentity, ssl.SSLContext] | None = None
        roots = self._roots()
        self.attestation = DynamicCredentials(self.identity, None)
        self.agent_api = DynamicCredentials(self.identity, roots)

    def _issue(self) -> ServerIdentity:
        authority = self.core.authorities.state.active_x509()
        if authority is None:
            raise RuntimeError("no active X.509 CA to issue the server SVID")
        return issue_server_identity(
            authority, self.core.trust_domain, SERVER_SVID_TTL, self.core.clock()
        )

    def endpoint_context(self) -> ssl.SSLContext:
        """The bundle endpoint's https_spiffe context: the current server SVID."""
        identity = self.identity
        if self._endpoint is None or self._endpoint[0] is not identity:
            self._endpoint = (identity, pem_server_context(identity.chain_pem, identity.key_pem))
        return self._endpoint[1]

    def _roots(self) -> bytes:
        return self.core.authorities.bundle().x509_pem()

    def refresh(self, reissue: bool = True) -> None:
        """New roots, and a new server SVID unless no CA signs right now (our active one
        was tainted through another server, its successor not yet active): the current
        SVID serves until the successor's activation refreshes again."""
        if reissue and self.core.authorities.state.active_x509() is not None:
            self.identity = self._issue()
        self.attestation.update(self.identity, None)
        self.agent_api.update(self.identity, self._roots())

    async def renew_forever(self) -> None:
        while True:
            wait = (self.identity.renew_at() - self.core.clock()).total_seconds()
            await trio.sleep(max(1.0, wait))
            await trio.to_thread.run_sync(self.refresh)
            log.info("server SVID renewed", not_after=self.identity.not_after.isoformat())


async def _rotate_forever(core: ServerCore) -> None:
    """The rotation schedule, and the replacement of an active key tainted or revoked through
    another server (`ServerCore.adopt_journal` wakes this loop; a restart finds it in the
    journal). A revoked active key leaves no active one: `rotate` replaces it at once."""
    while True:
        await core.replace_compromised_keys()
        wait = (core.authorities.next_check() - core.clock()).total_seconds()
        with trio.move_on_after(min(3600.0, max(0.05, wait))):
            await core.rotation_due.wait()
        core.rotation_due = trio.Event()
        done = await core.ca_operation(core.authorities.rotate)
        for step in done:
            log.info("ca rotation", step=step)


async def _follow_forever(core: ServerCore, wakeup: trio.MemoryReceiveChannel[int]) -> None:
    """Apply the change log on every wake-up (a write here, a NOTIFY from another server) and
    at least every `cluster.poll_interval`. While the database is unreachable the server is
    not ready, keeps serving agents from memory, and retries with backoff."""
    poll = core.config.cluster.poll_interval.total_seconds()
    failures = 0
    while True:
        with trio.move_on_after(poll):
            await wakeup.receive()
        while True:  # drain: one catch-up covers every queued notification
            try:
                wakeup.receive_nowait()
            except trio.WouldBlock:
                break
        try:
            await core.follow()
        except DatastoreUnavailable as exc:
            if failures == 0:
                log.warning("datastore unavailable; serving agents from memory", error=str(exc))
            core.ready_reason = f"datastore unavailable: {exc}"
            await trio.sleep(RECONNECT.delay(failures, random.random()))
            failures += 1
            continue
        if failures:
            log.info("datastore reachable again", after_failures=failures)
            failures = 0
            core.ready_reason = await trio.to_thread.run_sync(core.readiness)


async def _listen_forever(core: ServerCore, wake: trio.MemorySendChannel[int]) -> None:
    """PostgreSQL only: wake the follower on every other server's commit (NOTIFY)."""
    listener = ChangeListener(
        core.store.url, core.store.notify_channel, f"insignia-server listen {core.instance_id}"
    )
    poll = core.config.cluster.poll_interval.total_seconds()
    try:
        while True:
            if await trio.to_thread.run_sync(listener.wait, poll, abandon_on_cancel=True):
                wake.send_nowait(0)
    finally:
        listener.close()


async def _heartbeat_forever(core: ServerCore, addresses: dict[str, str]) -> None:
    """Keep this server's row in the servers registry fresh (`server list`)."""
    started_at = core.clock()
    while True:
        x509_key_id, jwt_key_id = core.active_key_ids()
        record = ServerRecord(
            core.instance_id, addresses, x509_key_id, jwt_key_id, started_at, core.clock()
        )
        try:
            await trio.to_thread.run_sync(core.store.put_server, record)
        except DatastoreUnavailable as exc:
            log.debug("heartbeat not recorded", error=str(exc))
        await trio.sleep(core.config.cluster.heartbeat_interval.total_seconds())


async def _housekeeping_forever(core: ServerCore) -> None:
    """Prune expired entries and join tokens, trim the change log, refresh readiness, and
    drop expired keys of servers that are gone from the bundle."""
    while True:
        core.ready_reason = await trio.to_thread.run_sync(core.readiness)
        try:
            await trio.to_thread.run_sync(core.store.prune_expired_entries)
            await trio.to_thread.run_sync(core.store.prune_join_tokens)
            await trio.to_thread.run_sync(
                core.store.prune_events, core.clock() - timedelta(hours=1)
            )
            await core.refresh_bundle()
        except DatastoreUnavailable as exc:
            log.debug("housekeeping skipped", error=str(exc))
        await trio.sleep(5)


def _add_port(
    server: grpc.aio.Server, key: str, host: str, port: int, credentials: DynamicCredentials
) -> int:
    """`add_secure_port`, or a refusal naming `key`, the address and why it cannot be bound.

    A plain bind first finds the cause (grpc only logs it, as a C-core line on stderr)."""
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as grpc does
            probe.bind((host, port))
    except OSError as exc:
        raise StartupRefused(key, f"cannot listen on {address}: {exc.strerror}") from exc
    try:
        return server.add_secure_port(address, credentials.credentials)
    except RuntimeError as exc:
        raise StartupRefused(key, f"cannot listen on {address}: {exc}") from exc


async def _serve_agent_api(
    core: ServerCore, tls: _ServerTls, task_status: trio.TaskStatus[dict[str, str]]
) -> None:
    api = core.config.agent_api

    async def start() -> tuple[grpc.aio.Server, int, grpc.aio.Server, int]:
        """Two servers, not two ports on one: the unauthenticated attestation port gets its
        own message size limit (the cap on concurrent attestations is in node_attestation)."""
        servicer, host = AgentApi(core), api.bind_address
        server = grpc.aio.server(options=GRPC_OPTIONS)
        agent_pb2_grpc.add_AgentAPIServicer_to_server(servicer, server)
        port = _add_port(server, "agent_api.port", host, api.port, tls.agent_api)
        attestation = grpc.aio.server(options=ATTESTATION_GRPC_OPTIONS)
        agent_pb2_grpc.add_AgentAPIServicer_to_server(servicer, attestation)
        att = _add_port(
            attestation, "agent_api.attestation_port", host, api.attestation_port, tls.attestation
        )
        await server.start()
        await attestation.start()
        return server, port, attestation, att

    server, port, attestation, att_port = await call_asyncio(start)
    try:
        host = api.bind_address
        task_status.started({"agent_api": f"{host}:{port}", "attestation": f"{host}:{att_port}"})
        await trio.sleep_forever()
    finally:
        with trio.CancelScope(shield=True):
            await call_asyncio(attestation.stop, 1.0)
            await call_asyncio(server.stop, 1.0)


async def run_daemon(config: ServerConfig, config_path: Path) -> None:
    """The whole server, until SIGTERM/SIGINT, holding the data_dir lock all along."""
    with refused_for_key("data_dir"):
        ensure_data_dir(config.data_dir)
    with lock_data_dir(config.data_dir), contextlib.ExitStack() as locks:
        with refused_for_key("admin_socket"):  # refuse a live one before opening anything
            claim_socket_path(config.admin_socket)
        sqlite_lock = _lock_sqlite(config.database_url)
        if sqlite_lock is not None:
            locks.enter_context(sqlite_lock)
        core = await trio.to_thread.run_sync(open_core, config, config_path)
        try:
            await _run(core, config)
        finally:
            core.signer.close()
            await trio.to_thread.run_sync(core.store.close)
            log.info("server stopped")


async def _run(core: ServerCore, config: ServerConfig) -> None:
    token = trio.lowlevel.current_trio_token()
    send, receive = trio.open_memory_channel[int](math.inf)
    core.store.add_listener(lambda head: token.run_sync_soon(send.send_nowait, head))
    for step in await core.ca_operation(core.authorities.load):
        log.info("ca rotation", step=step)
    await core.replace_compromised_keys()  # tainted through another server while we were down
    await core.load_model()
    tls = await trio.to_thread.run_sync(_ServerTls, core)
    await trio.to_thread.run_sync(core.signer.warm_up)
    core.on_ca_change = lambda: tls.refresh(reissue=True)
    core.ready_reason = await trio.to_thread.run_sync(core.readiness)
    core.metrics.bind_gauges(
        lambda: len(core.model.index), lambda: len(core.model.agents), core.model.connected_agents
    )
    async with open_trio_bridge() as bridge, trio.open_nursery() as nursery:
        core.bridge = bridge
        addresses: dict[str, Any] = await nursery.start(_serve_agent_api, core, tls)
        for name, bind in health_binds(config).items():
            with refused_for_key(f"{name}.address"):
                addresses[name] = await nursery.start(
                    serve_health, bind, core.metrics.registry, lambda: core.ready_reason
                )
        endpoint = config.federation.bundle_endpoint
        if endpoint.address:
            with refused_for_key("federation.bundle_endpoint.address"):
                addresses["bundle_endpoint"] = await nursery.start(
                    _serve_bundle_endpoint, core, tls
                )
        if config.oidc_discovery.address:
            with refused_for_key("oidc_discovery.address"):
                addresses["oidc_discovery"] = await nursery.start(
                    serve_oidc_discovery,
                    config.oidc_discovery,
                    config.jwt_issuer,
                    core.trust_domain,
                    lambda: core.model.bundle_state.spiffe_bundle,
                    OidcMetrics(core.metrics.registry, "insignia_server"),
                )
        admin = AdminApi(core, callers := CallerTable(), set(config.admin_uids))
        with refused_for_key("admin_socket"):
            socket_dir = await trio.to_thread.run_sync(
                admin_socket_dir, config.admin_socket, config.admin_uids
            )
        await nursery.start(
            lambda task_status: serve_grpc_with_peercred(
                config.admin_socket,
                admin_handlers(admin),
                callers,
                private_dir=socket_dir / "private",  # made 0700: only we reach grpc directly
                mode=0o666,  # anyone may connect; the peer-credential check authorizes
                task_status=task_status,
            )
        )
        addresses["admin_socket"] = str(config.admin_socket)
        if config.console is not None:
            with refused_for_key("console.address"):
                addresses["console"] = await nursery.start(
                    _serve_console, core, admin, config.console, tls
                )
        relationships = configured_relationships(config.federation.federates_with)
        core.configured_federation = {r.trust_domain: r for r in relationships}
        refreshers = Refreshers(core)
        await nursery.start(refreshers.run)
        core.on_federation_change = refreshers.apply
        await core.reload_federation()
        nursery.start_soon(_rotate_forever, core)
        nursery.start_soon(_follow_forever, core, receive)
        if core.store.backend == "postgresql":
            nursery.start_soon(_listen_forever, core, send)
        nursery.start_soon(tls.renew_forever)
        nursery.start_soon(_housekeeping_forever, core)
        # Caught before the addresses file tells anyone we are up: a SIGTERM that follows it
        # at once must meet our handler, not the default action.
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            await trio.to_thread.run_sync(_write_addresses, config.data_dir, addresses)
            nursery.start_soon(_heartbeat_forever, core, {k: str(v) for k, v in addresses.items()})
            log.info("server ready", trust_domain=str(core.trust_domain), **addresses)
            sd_notify("READY=1")
            async for signum in signals:
                if signum == signal.SIGHUP:  # would otherwise kill the server (exit 129)
                    log.info("server.sighup_ignored", detail="no reload; restart to reconfigure")
                    continue
                log.info("shutting down", signal=signal.Signals(signum).name)
                sd_notify("STOPPING=1")
                nursery.cancel_scope.cancel()
                break


async def _serve_bundle_endpoint(
    core: ServerCore, tls: _ServerTls, task_status: trio.TaskStatus[str]
) -> None:
    endpoint = core.config.federation.bundle_endpoint
    context: TlsContext = tls.endpoint_context
    if endpoint.profile == "https_web":
        assert endpoint.cert_file is not None and endpoint.key_file is not None  # config checked
        try:
            web = WebCertificate(endpoint.cert_file, endpoint.key_file)
        except (OSError, ssl.SSLError) as exc:
            raise StartupRefused("federation.bundle_endpoint.cert_file", str(exc)) from exc
        context = web.context
    document = BundleDocument(
        core.trust_domain,
        lambda: core.model.bundle_state.spiffe_bundle,
        int(endpoint.refresh_hint.total_seconds()),
    )
    await serve_http(endpoint.address, document.handle, tls=context, task_status=task_status)


async def _serve_console(
    core: ServerCore,
    admin: AdminApi,
    console: ConsoleConfig,
    tls: _ServerTls,
    task_status: trio.TaskStatus[str],
) -> None:
    from insignia.server.console.listener import serve_console  # Jinja2 only when configured

    context: TlsContext = tls.endpoint_context
    if console.cert_file is not None and console.key_file is not None:
        try:
            context = WebCertificate(console.cert_file, console.key_file).context
        except (OSError, ssl.SSLError) as exc:
            raise StartupRefused("console.cert_file", str(exc)) from exc
    await serve_console(core, admin, console, context, task_status=task_status)


def admin_socket_dir(admin_socket: Path, admin_uids: Sequence[int]) -> Path:
    """The admin socket's directory: made 0711 (traverse only, no listing) if we create it.

    The socket itself is open to every uid: SO_PEERCRED on each connection (root, our uid
    and `admin_uids`) is the authorization, so a listed uid must be able to reach the socket.
    The internal grpc socket behind the peer-credential front sits in a 0700 subdirectory.
    An existing directory keeps its mode (it may be shared, like /run: see
    `ensure_private_dir`); we only warn when it would keep `admin_uids` out.
    """
    created = not admin_socket.parent.exists()
    directory = ensure_private_dir(admin_socket.parent)  # refuses an unsafe existing one
    if created:
        directory.chmod(0o711)
    elif admin_uids and directory.stat().st_mode & 0o001 == 0:
        log.warning(
            "admin_uids cannot reach the admin socket",
            directory=str(directory),
            mode=f"{directory.stat().st_mode & 0o777:04o}",
            expected="search permission for others (e.g. 0711)",
        )
    return directory


def health_binds(config: ServerConfig) -> dict[str, str]:
    binds: dict[str, str] = {}
    if config.health.address:
        binds["health"] = config.health.address
    if config.metrics.address and config.metrics.address != config.health.address:
        binds["metrics"] = config.metrics.address
    return binds


def _write_addresses(data_dir: Path, addresses: dict[str, Any]) -> None:
    """Where each listener really is (port 0 picks a free one), for tests and tooling."""
    atomic_write(data_dir / ADDRESSES_FILE, json.dumps(addresses).encode(), mode=0o644)
