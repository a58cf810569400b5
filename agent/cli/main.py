"""`insignia-agent`: run the daemon, talk to a Workload API, check an agent's health.

Exit codes: 0 success, 1 runtime failure (server refused us, Workload API error), 2 bad
config or usage. Every failure is one line on stderr that says what was wrong.
"""

from __future__ import annotations

import http.client
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar, get_args

import click

from insignia import __version__
from insignia.agent.config import (
    DEFAULT_ADMIN_SOCKET_PATH,
    DEFAULT_CONFIG_PATH,
    AgentConfig,
    load_agent_config,
)
from insignia.bundle import Bundle, InvalidBundle
from insignia.daemon.config.cli_options import (
    LazyGroup,
    config_option,
    log_level_option,
    option,
)
from insignia.daemon.config.loading import CONFIG_EXIT_CODE, ConfigError
from insignia.daemon.logs import LogLevel

if TYPE_CHECKING:
    from insignia.attestors.interface import NodeAttestorAgent
    from insignia.attestors.registry import ConfiguredWorkloadAttestor


F = TypeVar("F", bound=Callable[..., Any])


def fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"insignia-agent: {message}", err=True)
    sys.exit(code)


def _check_trust_bundle(config: AgentConfig, path: Path) -> None:
    bundle_path = config.trust_bundle_path
    if bundle_path is None:
        return
    try:
        data = bundle_path.read_bytes()
        td = config.trust_domain_value
        bundle = (
            Bundle.parse_spiffe(td, data)
            if config.trust_bundle_format == "spiffe"
            else Bundle.parse_pem(td, data)
        )
    except OSError as exc:
        raise ConfigError(
            path, "trust_bundle_path", f"cannot read {bundle_path}: {exc.strerror}"
        ) from exc
    except InvalidBundle as exc:
        raise ConfigError(path, "trust_bundle_path", str(exc)) from exc
    if not bundle.x509_authorities:
        raise ConfigError(path, "trust_bundle_path", f"{bundle_path} holds no CA certificates")


class _LazyGroup(LazyGroup):
    """Imports the `api` and `helper` commands only when one of them runs: the daemon (`run`)
    would otherwise carry the Workload API client in its RSS, about 1 MB of an 80 MB budget."""

    lazy = {"api": "insignia.agent.cli.api:api", "helper": "insignia.agent.helper.cli:helper"}


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="insignia-agent")
def main() -> None:
    """Insignia agent: attests this node and serves the SPIFFE Workload API."""


def _checked_config(config_path: Path, join_token: str | None) -> AgentConfig:
    """The config as `run` uses it, its trust bundle checked; ConfigError otherwise."""
    config = load_agent_config(config_path)
    if join_token is not None:
        config = config.with_join_token(join_token)
    _check_trust_bundle(config, config_path)
    return config


def _plugins(
    config: AgentConfig, config_path: Path
) -> tuple[tuple[ConfiguredWorkloadAttestor, ...], NodeAttestorAgent]:
    """Configure the workload attestors and the node attestor; ConfigError names the key."""
    from insignia.attestors.registry import load_node_attestor_agent, load_workload_attestors

    workload_attestors = load_workload_attestors(config.workload_attestors, config_path)
    name = config.node_attestor_name
    node_attestor = load_node_attestor_agent(
        name, config.node_attestor[name], config.trust_domain_value, config_path
    )
    return workload_attestors, node_attestor


_config_option = config_option("Agent config file (TOML).", default=DEFAULT_CONFIG_PATH)


@main.command()
@_config_option
@option("--join-token", "-joinToken", help="Attest with this join token (overrides node_attestor).")
@log_level_option
def run(config_path: Path, join_token: str | None, log_level: str | None) -> None:
    """Run the agent daemon until SIGTERM or SIGINT."""
    from insignia.agent.daemon import AgentDaemon
    from insignia.agent.identity.node_attestation import AttestationRefused
    from insignia.daemon import runtime
    from insignia.daemon.logs import configure_logging, get_logger
    from insignia.daemon.peercred import unix_diag
    from insignia.daemon.peercred.unix_diag import UnixDiagUnavailable
    from insignia.daemon.startup import run_reporting_failures

    try:
        config = _checked_config(config_path, join_token)
        configure_logging(log_level or config.log.level, config.log.format)
        if join_token is not None:
            get_logger(__name__).warning(
                "agent.join_token_on_command_line",
                detail="every local user can read it in /proc/<pid>/cmdline while the agent "
                "runs; prefer token_file under [node_attestor.join_token]",
            )
        workload_attestors, node_attestor = _plugins(config, config_path)
    except ConfigError as exc:
        fail(str(exc), CONFIG_EXIT_CODE)
    try:
        unix_diag.probe()  # every Workload API connection depends on it
    except UnixDiagUnavailable as exc:
        fail(str(exc))
    daemon = AgentDaemon(config, workload_attestors, node_attestor)
    run_reporting_failures(
        "insignia-agent: ", config_path, lambda: runtime.run(daemon.run), (AttestationRefused,)
    )


@main.command()
@_config_option
def validate(config_path: Path) -> None:
    """Check a config as `run` would, without starting anything: "config OK", or exit 2."""
    try:
        _plugins(_checked_config(config_path, None), config_path)
    except ConfigError as exc:
        fail(str(exc), CONFIG_EXIT_CODE)
    click.echo("config OK")


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(str(self._path))


def _admin_socket_options(fn: F) -> F:
    """--config / --admin-socket: which agent's private admin socket to talk to."""
    fn = option(
        "--admin-socket",
        "-socketPath",
        type=click.Path(path_type=Path),
        default=None,
        help=f"Agent admin socket [default: from --config, else {DEFAULT_ADMIN_SOCKET_PATH}].",
    )(fn)
    return config_option("Read admin_socket_path from this config file.")(fn)


def _admin_request(
    config_path: Path | None,
    admin_socket: Path | None,
    method: str,
    url: str,
    timeout: float,
    failure: str = "agent is unreachable",
) -> tuple[int, str]:
    """(status, body) of one HTTP request on the admin socket; exit 1 with `failure` and
    the reason if it cannot be made."""
    path = admin_socket
    if path is None:
        try:
            path = (
                load_agent_config(config_path).admin_socket_path
                if config_path is not None
                else DEFAULT_ADMIN_SOCKET_PATH
            )
        except ConfigError as exc:
            fail(str(exc), CONFIG_EXIT_CODE)
    connection = _UnixHTTPConnection(path, timeout)
    try:
        connection.request(method, url)
        response = connection.getresponse()
        return response.status, response.read().decode(errors="replace").strip()
    except OSError as exc:
        fail(f"{failure}: cannot reach its admin socket {path}: {exc}")
    finally:
        connection.close()


@main.command()
@_admin_socket_options
@option("--timeout", "-timeout", type=float, default=5.0, show_default=True, help="Seconds.")
def healthcheck(config_path: Path | None, admin_socket: Path | None, timeout: float) -> None:
    """Exit 0 if the agent is ready (attested, synced, serving), else 1 with the reason."""
    status, body = _admin_request(
        config_path, admin_socket, "GET", "/ready", timeout, "agent is unhealthy"
    )
    if status != 200:
        fail(f"agent is unhealthy: {body}")
    click.echo("Agent is healthy.")


@main.group("log-level")
def log_level_group() -> None:
    """The running agent's log level (changed until it restarts; the config is not edited)."""


@log_level_group.command("show")
@_admin_socket_options
def log_level_show(config_path: Path | None, admin_socket: Path | None) -> None:
    """Print the level in force."""
    status, body = _admin_request(config_path, admin_socket, "GET", "/log-level", 5.0)
    if status != 200:
        fail(body)
    click.echo(body)


@log_level_group.command("set")
@click.argument("level", type=click.Choice(get_args(LogLevel)))
@_admin_socket_options
def log_level_set(level: str, config_path: Path | None, admin_socket: Path | None) -> None:
    """Switch the running agent to LEVEL at once."""
    status, body = _admin_request(config_path, admin_socket, "PUT", f"/log-level/{level}", 5.0)
    if status != 200:
        fail(body)
    click.echo(f"log level is now {body}")


if __name__ == "__main__":
    main()
