"""`insignia-agent helper`: keep svid.pem, svid_key.pem and bundle.pem current for legacy software.

Runs as the workload whose identity it writes (its uid, cgroup, ... are what the agent
attests), not inside the agent daemon. Exit codes: 0 done (or stopped by SIGTERM/SIGINT),
1 `--once` could not fetch an SVID in time, 2 bad usage.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import click
import trio

from insignia.agent.config import DEFAULT_SOCKET_PATH
from insignia.agent.helper.reload_command import InvalidReloadCommand, ReloadCommand
from insignia.agent.helper.svid_files import HelperSettings, Layout, SvidFilesHelper
from insignia.daemon.logs import LogFormat, LogLevel, configure_logging, get_logger
from insignia.workloadapi import InvalidEndpoint, endpoint_from_env, parse_endpoint

log = get_logger(__name__)


async def _serve(helper: SvidFilesHelper, once_within: float | None) -> bool:
    """Follow the Workload API until a signal (True); with `once_within` seconds, stop after
    the first write (True) or when they run out (False)."""
    finished = True
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:

            async def stop_on_signal() -> None:
                async for signum in signals:
                    log.info("svid_files.stopping", signal=signal.Signals(signum).name)
                    nursery.cancel_scope.cancel()

            nursery.start_soon(stop_on_signal)
            if once_within is not None:
                with trio.move_on_after(once_within) as scope:
                    await helper.run(once=True)
                finished = not scope.cancelled_caught
            else:
                await helper.run()
            nursery.cancel_scope.cancel()
    return finished


@click.command("helper")
@click.option(
    "--write-dir",
    type=click.Path(path_type=Path, file_okay=False),
    metavar="DIR",
    required=True,
    help="Directory for svid.pem, svid_key.pem (0600) and bundle.pem (created if missing).",
)
@click.option(
    "--reload-command",
    metavar="CMD",
    default=None,
    help="Run after every change, e.g. 'nginx -s reload' (split like a shell, never run by one).",
)
@click.option(
    "--reload-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=30.0,
    show_default=True,
    help="Seconds before the reload command is killed.",
)
@click.option(
    "--socket",
    "socket",
    default=None,
    help=f"Workload API socket [default: $SPIFFE_ENDPOINT_SOCKET, else {DEFAULT_SOCKET_PATH}].",
)
@click.option("--hint", default="", help="Write the SVID with this hint instead of the default.")
@click.option(
    "--include-federated/--no-include-federated",
    default=False,
    show_default=True,
    help="Append federated trust domains' authorities to bundle.pem.",
)
@click.option("--once", is_flag=True, help="Write the files once (and reload), then exit.")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=60.0,
    show_default=True,
    help="With --once: seconds to keep trying before exiting 1.",
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
)
@click.option(
    "--log-format", type=click.Choice(["json", "console"]), default="json", show_default=True
)
def helper(
    write_dir: Path,
    reload_command: str | None,
    reload_timeout: float,
    socket: str | None,
    hint: str,
    include_federated: bool,
    once: bool,
    timeout: float,
    log_level: LogLevel,
    log_format: LogFormat,
) -> None:
    """Keep an X509-SVID, its key and the bundle in DIR current; reload a program on change."""
    try:
        socket_path = parse_endpoint(socket) if socket else endpoint_from_env(DEFAULT_SOCKET_PATH)
        command = (
            ReloadCommand.parse(reload_command, reload_timeout)
            if reload_command is not None
            else None
        )
    except (InvalidEndpoint, InvalidReloadCommand) as exc:
        click.echo(f"insignia-agent: {exc}", err=True)
        sys.exit(2)
    configure_logging(log_level, log_format)
    settings = HelperSettings(
        write_dir=write_dir.absolute(),
        socket_path=socket_path,
        reload_command=command,
        layout=Layout(hint=hint, include_federated=include_federated),
    )
    log.info(
        "svid_files.starting",
        socket=str(socket_path),
        directory=str(settings.write_dir),
        reload_command=list(command.argv) if command else None,
    )
    if not trio.run(_serve, SvidFilesHelper(settings), timeout if once else None):
        click.echo(f"insignia-agent: no X509-SVID written within {timeout}s", err=True)
        sys.exit(1)
