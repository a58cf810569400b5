"""`insignia-server`: run the server, and administer it through the admin API socket."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import NoReturn, get_args

import click
from insignia_proto import admin_pb2

from insignia import __version__
from insignia.daemon.config.cli_options import config_option, log_level_option
from insignia.daemon.config.loading import CONFIG_EXIT_CODE, ConfigError
from insignia.daemon.logs import LogLevel, configure_logging
from insignia.daemon.runtime import run as run_trio
from insignia.daemon.startup import run_reporting_failures
from insignia.server.admin.client import admin_options, call, emit
from insignia.server.admin.commands import agent, authority, bundle, jwt, token, x509
from insignia.server.admin.console_commands import console
from insignia.server.admin.entry_commands import entry
from insignia.server.admin.server_commands import server_group
from insignia.server.config import load_server_config


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="insignia-server")
def main() -> None:
    """Insignia server: the trust domain's CA, registration entries and agent API."""


@main.command()
@config_option("Server config file (TOML); see server/server.sample.toml.", required=True)
@log_level_option
def run(config_path: Path, log_level: str | None) -> None:
    """Run the server until SIGTERM or SIGINT."""
    try:
        config = load_server_config(config_path)
        configure_logging(log_level or config.log.level, config.log.format)
    except (ConfigError, ValueError) as exc:
        _config_failure(exc)
    from insignia.server.daemon import run_daemon  # heavy imports only when running

    run_reporting_failures(
        "error: ", config_path, lambda: run_trio(run_daemon, config, config_path)
    )


@main.command()
@config_option("Server config file (TOML) to check.", required=True)
def validate(config_path: Path) -> None:
    """Check a config as `run` would, without starting anything: "config OK", or exit 2."""
    from insignia.server.validate import check_server_config

    try:
        check_server_config(config_path)
    except ConfigError as exc:
        _config_failure(exc)
    click.echo("config OK")


def _config_failure(exc: BaseException) -> NoReturn:
    click.echo(f"error: {exc}", err=True)
    sys.exit(CONFIG_EXIT_CODE)


@main.command()
@admin_options
def healthcheck(socket_path: Path, as_json: bool) -> None:
    """Exit 0 when the server answers on its socket and is ready, else 1."""
    response = call(socket_path, "Health", admin_pb2.HealthRequest())
    emit(as_json, response, lambda: "ready" if response.ready else f"not ready: {response.reason}")
    if not response.ready:
        sys.exit(1)


@main.group("log-level")
def log_level_group() -> None:
    """The running server's log level (changed until it restarts; the config is not edited)."""


@log_level_group.command("show")
@admin_options
def log_level_show(socket_path: Path, as_json: bool) -> None:
    """Print the level in force."""
    response = call(socket_path, "GetLogLevel", admin_pb2.GetLogLevelRequest())
    emit(as_json, response, lambda: response.level)


@log_level_group.command("set")
@click.argument("level", type=click.Choice(get_args(LogLevel)))
@admin_options
def log_level_set(socket_path: Path, as_json: bool, level: str) -> None:
    """Switch the running server to LEVEL at once."""
    response = call(socket_path, "SetLogLevel", admin_pb2.SetLogLevelRequest(level=level))
    emit(as_json, response, lambda: f"log level is now {response.level}")


for command in (entry, token, agent, bundle, x509, jwt, authority, server_group, console):
    main.add_command(command)
