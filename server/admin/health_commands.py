"""`insignia-server healthcheck` and `log-level show|set`: the running server's own state."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import get_args

import click
from insignia_proto import admin_pb2

from insignia.daemon.log_levels import LogLevel
from insignia.server.admin.client import admin_options, call, emit


@click.command()
@admin_options
def healthcheck(socket_path: Path, as_json: bool) -> None:
    """Exit 0 when the server answers on its socket and is ready, else 1."""
    response = call(socket_path, "Health", admin_pb2.HealthRequest())
    emit(as_json, response, lambda: "ready" if response.ready else f"not ready: {response.reason}")
    if not response.ready:
        sys.exit(1)


@click.group("log-level")
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
