"""The server's configuration file: every key, its default, and its validation.

`server/server.sample.toml` documents the same keys for operators; keep the two in step.
Values are checked here, at load time, so a bad trust domain or TTL stops the daemon with a
one-line error (exit code 2) instead of failing on the first agent that connects.
"""

from __future__ import annotations

from pathlib import Path, PosixPath
from typing import Annotated, Any, Literal

from msgspec import Meta, field

from insignia.daemon.config.loading import (
    Host,
    ListenAddress,
    LogSection,
    PositiveDuration,
    StrictModel,
    TrustDomainName,
    expect_text,
    load_toml,
)
from insignia.jwtsvid import (
    DEFAULT_MAX_AUDIENCE_BYTES,
    DEFAULT_MAX_AUDIENCES,
    AudienceLimits,
    check_token_fits,
)
from insignia.keys import KeyType
from insignia.server.admin.defaults import DEFAULT_ADMIN_SOCKET
from insignia.server.ca.rotation import ttl_beyond_guarantee
from insignia.server.federation.relationship import check_relationship
from insignia.server.oidc.policy import check_address, check_domain, check_issuer, check_listener
from insignia.spiffeid import TrustDomain

DEFAULT_DATA_DIR = Path("/var/lib/insignia/server")
MAX_UNIX_PATH = 107  # sun_path is 108 bytes with the terminating NUL

Port = Annotated[int, Meta(ge=0, le=65535)]
PositiveRate = Annotated[float, Meta(gt=0)]


class AgentApiConfig(StrictModel, frozen=True, kw_only=True):
    """The agents' gRPC listeners: mTLS for everything but Attest, plain server TLS for Attest.

    grpcio's server credentials either require a client certificate or never ask for one, so
    node attestation (which runs before the agent has an SVID) gets a port of its own.
    """

    bind_address: Host = Host("127.0.0.1")
    port: Port = 8081
    attestation_port: Port = 8082
    attestation_rate: PositiveRate = 1.0
    # Separate budgets, so a flood of one kind cannot starve the other (X.509 rotation).
    x509_signing_rate: PositiveRate = 500.0
    jwt_signing_rate: PositiveRate = 500.0
    # The attestation port is unauthenticated: bound what a peer can hold there.
    attestation_timeout: PositiveDuration = PositiveDuration(seconds=30)
    max_concurrent_attestations: Annotated[int, Meta(ge=1)] = 256
    # An idle Sync stream carries a heartbeat this often, so agents know the server is there;
    # an agent that hears nothing for about twice this moves to the next server (2 s: 4.5 s).
    sync_heartbeat_interval: PositiveDuration = PositiveDuration(seconds=2)
    # Worker processes for large X.509 signing batches; -1 = one per CPU (none on one CPU).
    signing_processes: Annotated[int, Meta(ge=-1, le=64)] = -1


class DatabaseUrl(str):
    """ "" (SQLite in data_dir) or an SQLAlchemy URL for SQLite or PostgreSQL."""

    __slots__ = ()

    @classmethod
    def from_config(cls, value: object) -> DatabaseUrl:
        text = expect_text(value)
        if text and not text.startswith(("sqlite://", "postgresql://", "postgresql+psycopg://")):
            raise ValueError("expected sqlite:///path or postgresql://user@host/db")
        return cls(text)


class SocketPath(PosixPath):
    """A Unix socket path: sun_path holds at most MAX_UNIX_PATH bytes."""

    @classmethod
    def from_config(cls, value: object) -> SocketPath:
        path = cls(expect_text(value))
        if len(bytes(path)) > MAX_UNIX_PATH:
            raise ValueError(f"longer than {MAX_UNIX_PATH} bytes, the limit for a Unix socket")
        return path


class DatabaseConfig(StrictModel, frozen=True, kw_only=True):
    url: DatabaseUrl = DatabaseUrl("")  # "" = sqlite in data_dir


class ClusterConfig(StrictModel, frozen=True, kw_only=True):
    """Several servers on one PostgreSQL database (docs/ha.md). Harmless for one server."""

    # How often the change log is read even without a NOTIFY (a dropped LISTEN connection
    # cannot lose a change, only delay it this long).
    poll_interval: PositiveDuration = PositiveDuration(seconds=1)
    # How often this server refreshes its row in the `servers` registry...
    heartbeat_interval: PositiveDuration = PositiveDuration(seconds=5)
    # ...and how long a row may go without one before `server list` calls it stale.
    stale_after: PositiveDuration = PositiveDuration(seconds=30)

    def __post_init__(self) -> None:
        if self.stale_after <= self.heartbeat_interval:
            raise ValueError("cluster.stale_after must be longer than cluster.heartbeat_interval")


class UpstreamConfig(StrictModel, frozen=True, kw_only=True):
    """An existing CA (PEM cert, then its chain up to the root) the server CA is signed under."""

    cert_file: Path
    key_file: Path


class CaConfig(StrictModel, frozen=True, kw_only=True):
    key_type: KeyType = KeyType.EC_P256
    jwt_key_type: KeyType | None = None  # None = same as key_type
    ttl: PositiveDuration = PositiveDuration(hours=24)
    key_manager: Literal["disk", "memory"] = "disk"
    upstream: UpstreamConfig | None = None


class HealthConfig(StrictModel, frozen=True, kw_only=True):
    address: ListenAddress = ListenAddress("127.0.0.1:8080")


class MetricsConfig(StrictModel, frozen=True, kw_only=True):
    address: ListenAddress = ListenAddress("127.0.0.1:8080")


BundleProfile = Literal["https_spiffe", "https_web"]
BundleFormat = Literal["spiffe", "pem"]


class BundleEndpointConfig(StrictModel, frozen=True, kw_only=True):
    """`[federation.bundle_endpoint]`: serve our bundle to federated peers ("" = off)."""

    address: ListenAddress = ListenAddress("")
    profile: BundleProfile = "https_spiffe"
    cert_file: Path | None = None  # https_web only; re-read when the files change
    key_file: Path | None = None
    refresh_hint: PositiveDuration = PositiveDuration(minutes=5)

    def __post_init__(self) -> None:
        web = self.profile == "https_web"
        if web and self.address and (self.cert_file is None or self.key_file is None):
            raise ValueError("federation.bundle_endpoint: https_web needs cert_file and key_file")
        if not web and (self.cert_file is not None or self.key_file is not None):
            raise ValueError(
                "federation.bundle_endpoint: cert_file and key_file are for https_web only; "
                "https_spiffe serves the server's own X509-SVID"
            )


class ConsoleConfig(StrictModel, frozen=True, kw_only=True):
    """`[console]`: the operators' web console over HTTPS (no section = off). Its certificate
    is the server's own X509-SVID unless cert_file and key_file are given (re-read when
    either changes)."""

    address: ListenAddress = ListenAddress("127.0.0.1:8444")
    cert_file: Path | None = None
    key_file: Path | None = None
    # How long the URL `insignia-server console login` prints can be used (once)...
    login_ttl: PositiveDuration = PositiveDuration(minutes=5)
    # ...and how long the session it opens lasts.
    session_ttl: PositiveDuration = PositiveDuration(hours=8)

    def __post_init__(self) -> None:
        if not self.address:
            raise ValueError("console.address: expected host:port (no [console] turns it off)")
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("console: cert_file and key_file go together")


class FederationRelationshipConfig(StrictModel, frozen=True, kw_only=True):
    """One `[[federation.federates_with]]`: a peer trust domain and where its bundle is."""

    trust_domain: TrustDomainName
    bundle_endpoint_url: str
    profile: BundleProfile = "https_spiffe"
    endpoint_spiffe_id: str = ""  # https_spiffe only
    trust_domain_bundle: Path | None = None  # https_spiffe bootstrap bundle
    trust_domain_bundle_format: BundleFormat = "spiffe"
    web_ca_file: Path | None = None  # https_web: roots trusted instead of the system's

    def __post_init__(self) -> None:
        check_relationship(
            self.trust_domain, self.bundle_endpoint_url, self.profile, self.endpoint_spiffe_id
        )
        if self.web_ca_file is not None and self.profile != "https_web":
            raise ValueError("web_ca_file is for https_web only")


class FederationConfig(StrictModel, frozen=True, kw_only=True):
    bundle_endpoint: BundleEndpointConfig = field(default_factory=BundleEndpointConfig)
    federates_with: list[FederationRelationshipConfig] = []

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for relationship in self.federates_with:
            if relationship.trust_domain in seen:
                raise ValueError(
                    f"federation.federates_with: {relationship.trust_domain} appears twice"
                )
            seen.add(relationship.trust_domain)


class OidcAddress(str):
    """The OIDC discovery listener: "host:port", "unix:/path", or "" for none."""

    __slots__ = ()

    @classmethod
    def from_config(cls, value: object) -> OidcAddress:
        text = expect_text(value)
        if text:
            check_address(text)
        return cls(text)


class DomainName(str):
    """A name the OIDC discovery listener answers for (a DNS name or an IP address)."""

    __slots__ = ()

    @classmethod
    def from_config(cls, value: object) -> DomainName:
        text = expect_text(value)
        check_domain(text)
        return cls(text)


class OidcDiscoveryConfig(StrictModel, frozen=True, kw_only=True):
    """`[oidc_discovery]`: serve the OIDC discovery document and JWKS ("" = off)."""

    address: OidcAddress = OidcAddress("")
    cert_file: Path | None = None  # HTTPS; re-read when the files change
    key_file: Path | None = None
    domains: list[DomainName] = []  # the Host names answered; empty = any

    def __post_init__(self) -> None:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together (HTTPS), or neither")
        check_listener(self.address, self.cert_file is not None)


class ServerConfig(StrictModel, frozen=True, kw_only=True):
    trust_domain: TrustDomainName
    data_dir: Path = DEFAULT_DATA_DIR
    admin_socket: SocketPath = SocketPath(DEFAULT_ADMIN_SOCKET)
    admin_uids: list[Annotated[int, Meta(ge=0)]] = []
    default_x509_svid_ttl: PositiveDuration = PositiveDuration(hours=1)
    default_jwt_svid_ttl: PositiveDuration = PositiveDuration(minutes=5)
    jwt_issuer: str = ""
    # What one JWT-SVID request may ask for (agents and `jwt mint`): see AudienceLimits.
    jwt_max_audiences: Annotated[int, Meta(ge=1)] = DEFAULT_MAX_AUDIENCES
    jwt_max_audience_bytes: Annotated[int, Meta(ge=1)] = DEFAULT_MAX_AUDIENCE_BYTES
    agent_svid_ttl: PositiveDuration = PositiveDuration(hours=1)
    agent_api: AgentApiConfig = field(default_factory=AgentApiConfig)
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    ca: CaConfig = field(default_factory=CaConfig)
    join_token_ttl: PositiveDuration = PositiveDuration(seconds=600)
    # [node_attestors.<plugin>] sections, validated by each plugin's own config model.
    node_attestors: dict[str, dict[str, Any]] = field(default_factory=lambda: {"join_token": {}})
    health: HealthConfig = field(default_factory=HealthConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    log: LogSection = field(default_factory=LogSection)
    federation: FederationConfig = field(default_factory=FederationConfig)
    oidc_discovery: OidcDiscoveryConfig = field(default_factory=OidcDiscoveryConfig)
    console: ConsoleConfig | None = None

    def __post_init__(self) -> None:
        for relationship in self.federation.federates_with:
            if relationship.trust_domain == self.trust_domain:
                raise ValueError(
                    f"federation.federates_with: {self.trust_domain} is this server's own "
                    "trust domain"
                )
        api = self.agent_api
        if api.port != 0 and api.port == api.attestation_port:
            raise ValueError("agent_api.port and agent_api.attestation_port must differ")
        check_token_fits(self.audience_limits, self.jwt_issuer)
        if self.jwt_issuer:
            check_issuer(self.jwt_issuer, self.oidc_discovery.domains)
        elif self.oidc_discovery.address:
            raise ValueError(
                "jwt_issuer: required when oidc_discovery.address is set (the issuer that "
                "relying parties discover, e.g. https://oidc.example.org)"
            )

    @property
    def audience_limits(self) -> AudienceLimits:
        return AudienceLimits(self.jwt_max_audiences, self.jwt_max_audience_bytes)

    @property
    def td(self) -> TrustDomain:
        return TrustDomain.parse(self.trust_domain)

    @property
    def database_url(self) -> str:
        return self.database.url or f"sqlite:///{self.data_dir / 'datastore.sqlite3'}"

    @property
    def jwt_key_type(self) -> KeyType:
        return self.ca.jwt_key_type or self.ca.key_type

    def ttl_warnings(self) -> list[str]:
        """The configured TTLs the CA cannot guarantee (rotation.guaranteed_svid_ttl)."""
        configured = (
            ("default_x509_svid_ttl", self.default_x509_svid_ttl),
            ("default_jwt_svid_ttl", self.default_jwt_svid_ttl),
            ("agent_svid_ttl", self.agent_svid_ttl),
        )
        warnings = (ttl_beyond_guarantee(name, ttl, self.ca.ttl) for name, ttl in configured)
        return [warning for warning in warnings if warning is not None]


def load_server_config(path: Path | str) -> ServerConfig:
    """Load and validate `path`; `ConfigError` (one line naming the key) on any problem."""
    return load_toml(path, ServerConfig)
