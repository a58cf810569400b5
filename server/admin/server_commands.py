"""`insignia-server server list`: every server sharing the database, alive or stale."""

from __future__ import annotations

import json
from pathlib import Path

import click
from insignia_proto import admin_pb2

from insignia.daemon.times import format_time
from insignia.server.admin.client import admin_options, call, to_dict


@click.group("server")
def server_group() -> None:
    """The servers sharing this server's database (the servers registry)."""


def server_line(s: admin_pb2.Server) -> str:
    """One line: id, state word, last heartbeat, then what an operator looks for next."""
    parts = [s.id, s.state, f"last heartbeat {format_time(s.heartbeat_at)}"]
    if s.addresses.get("agent_api"):
        parts.append(f"agent_api {s.addresses['agent_api']}")
    parts.append(f"x509 {s.x509_authority_id or '-'}")
    parts.append(f"jwt {s.jwt_authority_id or '-'}")
    if s.answering:
        parts.append("(this server)")
    return "  ".join(parts)


@server_group.command("list")
@admin_options
def server_list(socket_path: Path, as_json: bool) -> None:
    """One line per server: its id, `alive` or `stale`, and its last heartbeat."""
    response = call(socket_path, "ListServers", admin_pb2.ListServersRequest())
    if as_json:
        click.echo(json.dumps([to_dict(s) for s in response.servers], indent=2))
        return
    for s in response.servers:
        click.echo(server_line(s))
