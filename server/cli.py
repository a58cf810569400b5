"""`insignia-server`: run the server, and administer it through the admin API socket.

Each command imports what it needs when it runs (`LazyGroup`, and imports inside `run` and
`validate`): `--version` and the admin commands never load the daemon, SQLAlchemy, trio or
structlog (tests/integration/test_cli_imports.py checks it).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import click

from insignia import __version__
from insignia.daemon.config.cli_options import LazyGroup, config_option, log_level_option

if TYPE_CHECKING:
    from insignia.server.config import ServerConfig

_ADMIN = "insignia.server.admin"


class _ServerGroup(LazyGroup):
    lazy = {
        "agent": f"{_ADMIN}.commands:agent",
        "authority": f"{_ADMIN}.commands:authority",
        "bundle": f"{_ADMIN}.federation_commands:bundle",  # with its set, list and delete
        "console": f"{_ADMIN}.console_commands:console",
        "entry": f"{_ADMIN}.entry_commands:entry",
        "federation": f"{_ADMIN}.federation_commands:federation",
        "healthcheck": f"{_ADMIN}.health_commands:healthcheck",
        "jwt": f"{_ADMIN}.commands:jwt",
        "log-level": f"{_ADMIN}.health_commands:log_level_group",
        "server": f"{_ADMIN}.server_commands:server_group",
        "token": f"{_ADMIN}.commands:token",
        "x509": f"{_ADMIN}.commands:x509",
    }


@click.group(cls=_ServerGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="insignia-server")
def main() -> None:
    """Insignia server: the trust domain's CA, registration entries and agent API."""


@main.command()
@config_option("Server config file (TOML); see server/server.sample.toml.", required=True)
@log_level_option
def run(config_path: Path, log_level: str | None) -> None:
    """Run the server until SIGTERM or SIGINT."""
    config = _config_for_running(config_path, log_level)
    from insignia.daemon.runtime import run as run_trio
    from insignia.daemon.startup import run_reporting_failures
    from insignia.server.daemon import run_daemon

    run_reporting_failures(
        "error: ", config_path, lambda: run_trio(run_daemon, config, config_path)
    )


@main.group()
def oidc() -> None:
    """OIDC discovery of the JWT-SVID keys, as a process of its own."""


@oidc.command("serve")
@config_option("Server config file (TOML) with [oidc_discovery]; see docs/oidc.md.", required=True)
@log_level_option
def oidc_serve(config_path: Path, log_level: str | None) -> None:
    """Serve [oidc_discovery] from the datastore's keys (no CA keys) until SIGTERM or SIGINT."""
    config = _config_for_running(config_path, log_level)
    from insignia.daemon.runtime import run as run_trio
    from insignia.daemon.startup import run_reporting_failures
    from insignia.server.oidc.provider import run_provider

    run_reporting_failures("error: ", config_path, lambda: run_trio(run_provider, config))


def _config_for_running(config_path: Path, log_level: str | None) -> ServerConfig:
    """The loaded config with logging set up, or exit 2 with the one-line error."""
    from insignia.daemon.config.loading import ConfigError
    from insignia.daemon.logs import configure_logging
    from insignia.server.config import load_server_config

    try:
        config = load_server_config(config_path)
        configure_logging(log_level or config.log.level, config.log.format)
    except (ConfigError, ValueError) as exc:
        _config_failure(exc)
    return config


@main.command()
@config_option("Server config file (TOML) to check.", required=True)
def validate(config_path: Path) -> None:
    """Check a config as `run` would, without starting anything: "config OK", or exit 2."""
    from insignia.daemon.config.loading import ConfigError
    from insignia.server.validate import check_server_config

    try:
        check_server_config(config_path)
    except ConfigError as exc:
        _config_failure(exc)
    click.echo("config OK")


def _config_failure(exc: BaseException) -> NoReturn:
    from insignia.daemon.config.loading import CONFIG_EXIT_CODE

    click.echo(f"error: {exc}", err=True)
    sys.exit(CONFIG_EXIT_CODE)
