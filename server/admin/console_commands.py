"""`insignia-server console login`: a one-time URL for the web console."""

from __future__ import annotations

from pathlib import Path

import click
from insignia_proto import admin_pb2

from insignia.daemon.times import format_time
from insignia.server.admin.client import admin_options, call, emit


@click.group()
def console() -> None:
    """The web console ([console] in the server config)."""


@console.command("login")
@admin_options
def console_login(socket_path: Path, as_json: bool) -> None:
    """Print a one-time login URL (admins only, as for every admin command)."""
    response = call(socket_path, "CreateConsoleLogin", admin_pb2.CreateConsoleLoginRequest())
    emit(
        as_json,
        response,
        lambda: (
            f"{response.url}\n"
            f"Open it once before {format_time(response.expires_at)}; session {response.session}."
        ),
    )
