"""The CLI's side of the admin API: connect to the Unix socket, call, print, fail clearly."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final, NoReturn, TypeVar

import click
import grpc
from google.protobuf.message import Message
from insignia_proto import admin_pb2, admin_pb2_grpc

from insignia.daemon.config.cli_options import option
from insignia.server.admin.defaults import DEFAULT_ADMIN_SOCKET

F = TypeVar("F", bound=Callable[..., Any])
CALL_TIMEOUT = 30.0
# The admin API carries TTLs as int32 seconds: refuse larger ones as a usage error (exit 2,
# naming the flag), not as a protobuf ValueError traceback.
MAX_TTL_SECONDS = 2**31 - 1


def fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def admin_options(fn: F) -> F:
    """--socket and --json for every admin command."""
    fn = option(
        "--socket",
        "-socketPath",
        "socket_path",
        type=click.Path(path_type=Path),
        default=DEFAULT_ADMIN_SOCKET,
        show_default=True,
        envvar="INSIGNIA_SERVER_SOCKET",
        help="Admin API socket of the server.",
    )(fn)
    fn = click.option(
        "--json", "as_json", is_flag=True, callback=_json_or_spire_output, help="Print JSON."
    )(fn)
    return click.option(  # SPIRE's `-output json|pretty`; given, it is processed before --json
        "-output",
        type=click.Choice(["json", "pretty"]),
        hidden=True,
        expose_value=False,
        callback=lambda ctx, _param, value: ctx.meta.__setitem__(_OUTPUT, value),
    )(fn)


_OUTPUT = "insignia.spire_output"


def _json_or_spire_output(ctx: click.Context, _param: click.Parameter, value: bool) -> bool:
    return value or ctx.meta.get(_OUTPUT) == "json"


# Starts the detail of an UNAVAILABLE the server itself sent: it answered, its database did not.
DATASTORE_UNAVAILABLE_PREFIX: Final = "the server's datastore is unavailable: "


@contextmanager
def admin_stub(socket_path: Path) -> Iterator[admin_pb2_grpc.AdminAPIStub]:
    try:
        socket_path.stat()
    except FileNotFoundError:
        fail(f"admin socket {socket_path} does not exist (is the server running? see --socket)")
    except OSError as exc:
        fail(f"cannot use admin socket {socket_path}: {exc.strerror}")
    with grpc.insecure_channel(f"unix:{socket_path}") as channel:
        yield admin_pb2_grpc.AdminAPIStub(channel)


def call(socket_path: Path, method: str, request: Message) -> Any:
    """One admin RPC; any gRPC error becomes one line on stderr and exit code 1."""
    with admin_stub(socket_path) as stub:
        try:
            return getattr(stub, method)(request, timeout=CALL_TIMEOUT)
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else None
            details = (exc.details() if hasattr(exc, "details") else str(exc)) or ""
            if code == grpc.StatusCode.UNAVAILABLE and details.startswith(
                DATASTORE_UNAVAILABLE_PREFIX
            ):
                fail(f"UNAVAILABLE: {details} (nothing was changed; retry later)")
            if code == grpc.StatusCode.UNAVAILABLE:
                fail(f"cannot reach the server at {socket_path}: {details}")
            fail(f"{code.name if code else 'failed'}: {details}")


def to_dict(message: Message) -> dict[str, Any]:
    from google.protobuf.json_format import MessageToDict  # for --json only (12 ms to import)

    return MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def emit(as_json: bool, message: Message, text: Callable[[], str]) -> None:
    click.echo(json.dumps(to_dict(message), indent=2) if as_json else text())


def count_command(group: click.Group, method: str, noun: str, plural: str) -> None:
    """`GROUP count`: the datastore's COUNT, printed as "N <noun|plural>" (or {"count": N})."""

    @group.command("count", help=f"Print how many {plural} there are.")
    @admin_options
    def command(socket_path: Path, as_json: bool) -> None:
        response = call(socket_path, method, admin_pb2.CountRequest())
        emit(
            as_json, response, lambda: f"{response.count} {noun if response.count == 1 else plural}"
        )
