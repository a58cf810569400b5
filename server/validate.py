"""`insignia-server validate`: every check the daemon makes on its config before it opens anything.

The file is parsed and validated as `run` does, then the parts whose validity depends on
other files are checked the same way the daemon will: the node attestors' server halves are
configured (an x509pop CA bundle must load), the upstream CA files and the OIDC discovery
certificate must load, and data_dir, if it exists, must be a directory. Nothing is created,
bound or written.
"""

from __future__ import annotations

from pathlib import Path

from insignia.attestors.interface import ServerEnvironment
from insignia.attestors.registry import load_node_attestor_servers
from insignia.daemon.config.loading import ConfigError, StartupRefused
from insignia.server.ca.state import UpstreamError, load_upstream
from insignia.server.config import ServerConfig, load_server_config
from insignia.server.core import JoinTokens
from insignia.server.datastore.engine import normalize_url
from insignia.server.federation.relationship import configured_relationships
from insignia.server.oidc.listener import load_certificate


def check_server_config(config_path: Path) -> ServerConfig:
    """The loaded config, or `ConfigError` naming the first key that would stop `run`."""
    config = load_server_config(config_path)
    if config.data_dir.exists() and not config.data_dir.is_dir():
        raise ConfigError(config_path, "data_dir", f"{config.data_dir} is not a directory")
    try:
        normalize_url(config.database_url)
    except ValueError as exc:
        raise ConfigError(config_path, "database.url", str(exc)) from exc
    upstream = config.ca.upstream
    if upstream is not None:
        try:
            load_upstream(upstream.cert_file, upstream.key_file)
        except UpstreamError as exc:
            key = "cert_file" if exc.path == upstream.cert_file else "key_file"
            raise ConfigError(config_path, f"ca.upstream.{key}", str(exc)) from exc
    if config.oidc_discovery.address:
        try:
            load_certificate(config.oidc_discovery)
        except StartupRefused as exc:
            raise ConfigError(config_path, exc.key, str(exc).removeprefix(exc.key + ": ")) from exc
    try:  # bootstrap bundles and web CA files, read as `run` reads them
        configured_relationships(config.federation.federates_with)
    except StartupRefused as exc:
        raise ConfigError(config_path, "", str(exc)) from exc
    env = ServerEnvironment(config.td, token_store=JoinTokens())
    load_node_attestor_servers(config.node_attestors, env, source=config_path)
    return config
