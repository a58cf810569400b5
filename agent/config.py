"""The agent's TOML config: every key, its default, and the checks that make a bad file fail fast.

Loaded through `insignia.daemon.config.loading.load_toml`, so an unknown key, a bad value or a
missing file becomes one line naming the key, and the CLI exits with code 2. Plugin sections
(the node attestor and the workload attestors) are passed through as tables; each plugin
validates its own keys when it is configured at start-up.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, field

from insignia.agent.identity.targets import DEFAULT_SERVER_PORT, ServerTarget
from insignia.agent.workloadapi.sds_service import SdsNames
from insignia.backoff import Backoff
from insignia.daemon.config.loading import (
    AbsolutePath,
    ListenAddress,
    LogSection,
    PositiveDuration,
    SpiffeIdText,
    StrictModel,
    TrustDomainName,
    load_toml,
)
from insignia.daemon.keepalive import AGENT_MIN_PING_INTERVAL, AGENT_PING_INTERVAL
from insignia.daemon.peercred.front import DEFAULT_MAX_CONNECTIONS_PER_UID, DEFAULT_STALL_TIMEOUT
from insignia.jwtsvid import (
    DEFAULT_MAX_AUDIENCE_BYTES,
    DEFAULT_MAX_AUDIENCES,
    AudienceLimits,
    check_token_fits,
)
from insignia.keys import KeyType
from insignia.spiffeid import SpiffeId, TrustDomain

DEFAULT_CONFIG_PATH = Path("/etc/insignia/agent.toml")
DEFAULT_SOCKET_PATH = Path("/run/insignia-agent/public/api.sock")
DEFAULT_ADMIN_SOCKET_PATH = Path("/run/insignia-agent/private/admin.sock")
DEFAULT_DATA_DIR = Path("/var/lib/insignia-agent")

Port = Annotated[int, Meta(ge=1, le=65535)]
PositiveRate = Annotated[float, Meta(gt=0)]
NonEmptyName = Annotated[str, Meta(min_length=1, max_length=256)]


class ServerSection(StrictModel, frozen=True, kw_only=True):
    """Where the servers are: `address` (+ `port`) for one, `addresses` ("host:port" each) for
    several sharing one datastore. Attestation has its own port on every listed host (TLS
    without a client certificate)."""

    address: str = ""
    port: Port | None = None
    addresses: list[str] = field(default_factory=list)
    attestation_port: Port = 8082

    def __post_init__(self) -> None:
        if self.address and self.addresses:
            raise ValueError("set address (one server) or addresses (several), not both")
        if not self.address and not self.addresses:
            raise ValueError('set address = "host" or addresses = ["host:port", ...]')
        if self.addresses and self.port is not None:
            raise ValueError("port applies to address only: give each of addresses its port")
        targets = self.targets  # raises ValueError naming the bad element
        if len(set(targets)) != len(targets):
            raise ValueError("addresses lists the same host:port twice")

    @property
    def targets(self) -> tuple[ServerTarget, ...]:
        """Every configured server, in config order (names not resolved yet)."""
        if self.address:
            return (ServerTarget(self.address, self.port or DEFAULT_SERVER_PORT),)
        return tuple(ServerTarget.parse(text) for text in self.addresses)


class WorkloadSection(StrictModel, frozen=True, kw_only=True):
    """How the Workload API treats callers and the SVIDs it hands them."""

    attestation_timeout: PositiveDuration = PositiveDuration(seconds=5)
    key_type: KeyType = KeyType.EC_P256
    max_message_bytes: Annotated[int, Meta(ge=4096)] = 4 * 1024 * 1024
    #: Connections one uid may hold open on the Workload API socket (see peercred_front).
    max_connections_per_uid: Annotated[int, Meta(ge=1)] = DEFAULT_MAX_CONNECTIONS_PER_UID
    #: A Workload API connection whose caller (or grpc) leaves bytes unread this long is
    #: closed, so a client that stops reading cannot hold memory and descriptors.
    stall_timeout: PositiveDuration = PositiveDuration(seconds=DEFAULT_STALL_TIMEOUT)
    #: What one FetchJWTSVID may ask for (insignia.jwtsvid.AudienceLimits).
    jwt_max_audiences: Annotated[int, Meta(ge=1)] = DEFAULT_MAX_AUDIENCES
    jwt_max_audience_bytes: Annotated[int, Meta(ge=1)] = DEFAULT_MAX_AUDIENCE_BYTES
    #: JWT-SVIDs the server is asked to mint per second, per caller uid and per SPIFFE ID
    #: (cached tokens are free): one caller cannot spend the node's server budget alone.
    jwt_mint_rate_per_uid: PositiveRate = 50.0
    jwt_mint_rate_per_spiffe_id: PositiveRate = 50.0

    def __post_init__(self) -> None:
        check_token_fits(self.audience_limits)

    @property
    def audience_limits(self) -> AudienceLimits:
        return AudienceLimits(self.jwt_max_audiences, self.jwt_max_audience_bytes)


class SyncSection(StrictModel, frozen=True, kw_only=True):
    """Reconnect pacing toward the server (push stream, attestation, renewal): exponential
    backoff, each wait drawn between half and all of the current step."""

    initial_backoff: PositiveDuration = PositiveDuration(milliseconds=200)
    max_backoff: PositiveDuration = PositiveDuration(seconds=30)
    rpc_timeout: PositiveDuration = PositiveDuration(seconds=30)
    #: How often the agent pings its server connection (a dead one is noticed within this
    #: plus 10 s). The server accepts pings down to insignia.keepalive's floor.
    keepalive_interval: PositiveDuration = PositiveDuration(
        seconds=AGENT_PING_INTERVAL.total_seconds()
    )

    def __post_init__(self) -> None:
        if self.max_backoff < self.initial_backoff:
            raise ValueError("max_backoff must be >= initial_backoff")
        if self.keepalive_interval < AGENT_MIN_PING_INTERVAL:
            raise ValueError(
                f"keepalive_interval must be at least {AGENT_MIN_PING_INTERVAL.total_seconds():g}s"
                " (the server treats more frequent pings as abuse)"
            )

    def backoff(self) -> Backoff:
        return Backoff(
            self.initial_backoff.total_seconds(), self.max_backoff.total_seconds(), jitter=0.5
        )


class SdsSection(StrictModel, frozen=True, kw_only=True):
    """Envoy SDS on the Workload API socket: the resource names, as SPIRE's agent has them
    (insignia.agent.workloadapi.sds_service)."""

    default_svid_name: NonEmptyName = "default"
    default_bundle_name: NonEmptyName = "ROOTCA"
    default_all_bundles_name: NonEmptyName = "ALL"
    #: Send "ALL" as plain CAs instead of Envoy's SPIFFE validator configuration.
    disable_spiffe_cert_validation: bool = False

    def __post_init__(self) -> None:
        names = (self.default_svid_name, self.default_bundle_name, self.default_all_bundles_name)
        if len(set(names)) != len(names):
            raise ValueError(
                "default_svid_name, default_bundle_name and default_all_bundles_name must differ"
            )
        if any(name.startswith("spiffe://") for name in names):
            raise ValueError("a default resource name must not be a SPIFFE ID")

    @property
    def names(self) -> SdsNames:
        return SdsNames(
            self.default_svid_name,
            self.default_bundle_name,
            self.default_all_bundles_name,
            self.disable_spiffe_cert_validation,
        )


class BrokerApiSection(StrictModel, frozen=True, kw_only=True):
    """The SPIFFE Broker API on a socket of its own (insignia.agent.workloadapi.broker)."""

    #: Unset: the Broker API is not served.
    socket_path: AbsolutePath | None = None
    #: The only callers that may use it, by the SPIFFE ID their own attestation gives them.
    authorized_brokers: list[SpiffeIdText] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.socket_path is not None and not self.authorized_brokers:
            raise ValueError(
                "authorized_brokers must name at least one broker when socket_path is set"
            )

    @property
    def brokers(self) -> frozenset[SpiffeId]:
        return frozenset(SpiffeId.parse(text) for text in self.authorized_brokers)


class HealthSection(StrictModel, frozen=True, kw_only=True):
    """HTTP /live and /ready (and /metrics). The admin socket serves the same, always."""

    address: ListenAddress = ListenAddress("127.0.0.1:8089")


class MetricsSection(StrictModel, frozen=True, kw_only=True):
    """Prometheus /metrics; the same listener as health when the addresses are equal."""

    address: ListenAddress = ListenAddress("127.0.0.1:8089")


def _default_workload_attestors() -> dict[str, dict[str, Any]]:
    return {"unix": {}}


class AgentConfig(StrictModel, frozen=True, kw_only=True):
    trust_domain: TrustDomainName
    server: ServerSection
    data_dir: AbsolutePath = AbsolutePath(DEFAULT_DATA_DIR)
    socket_path: AbsolutePath = AbsolutePath(DEFAULT_SOCKET_PATH)
    admin_socket_path: AbsolutePath = AbsolutePath(DEFAULT_ADMIN_SOCKET_PATH)
    trust_bundle_path: AbsolutePath | None = None
    trust_bundle_format: Literal["pem", "spiffe"] = "pem"
    insecure_bootstrap: bool = False
    node_attestor: Annotated[dict[str, dict[str, Any]], Meta(min_length=1, max_length=1)]
    workload_attestors: Annotated[dict[str, dict[str, Any]], Meta(min_length=1)] = field(
        default_factory=_default_workload_attestors
    )
    workload: WorkloadSection = field(default_factory=WorkloadSection)
    sync: SyncSection = field(default_factory=SyncSection)
    sds: SdsSection = field(default_factory=SdsSection)
    #: Callers allowed to use the Delegated Identity API on the admin socket, by the SPIFFE ID
    #: their own attestation gives them (SPIRE's key).
    authorized_delegates: list[SpiffeIdText] = field(default_factory=list)
    broker_api: BrokerApiSection = field(default_factory=BrokerApiSection)
    health: HealthSection = field(default_factory=HealthSection)
    metrics: MetricsSection = field(default_factory=MetricsSection)
    log: LogSection = field(default_factory=LogSection)

    def __post_init__(self) -> None:
        if self.trust_bundle_path is None and not self.insecure_bootstrap:
            raise ValueError(
                "set trust_bundle_path (the server's CA bundle) or insecure_bootstrap = true "
                "(development only)"
            )
        if self.trust_bundle_path is not None and self.insecure_bootstrap:
            raise ValueError("trust_bundle_path and insecure_bootstrap = true exclude each other")
        if self.socket_path.parent == self.admin_socket_path.parent:
            raise ValueError(
                "socket_path and admin_socket_path must be in different directories: the "
                "Workload API directory is world-reachable, the admin one is private"
            )
        broker = self.broker_api.socket_path
        if broker is not None and broker.parent == self.admin_socket_path.parent:
            raise ValueError(
                "broker_api.socket_path and admin_socket_path must be in different directories"
            )
        if broker is not None and broker == self.socket_path:
            raise ValueError("broker_api.socket_path must differ from socket_path")

    @property
    def delegates(self) -> frozenset[SpiffeId]:
        return frozenset(SpiffeId.parse(text) for text in self.authorized_delegates)

    @property
    def node_attestor_name(self) -> str:
        return next(iter(self.node_attestor))

    def with_join_token(self, token: str) -> AgentConfig:
        """`run --join-token`: attest with this token, whatever node attestor is configured."""
        return msgspec.structs.replace(self, node_attestor={"join_token": {"token": token}})

    @property
    def trust_domain_value(self) -> TrustDomain:
        return TrustDomain.parse(self.trust_domain)


def load_agent_config(path: Path | str) -> AgentConfig:
    """The validated config at `path`, or `ConfigError` (insignia.daemon.config) naming the bad
    key."""
    return load_toml(path, AgentConfig)
