"""`insignia-agent api ...`: a Workload API client for operators and scripts.

The socket comes from --socket, else SPIFFE_ENDPOINT_SOCKET, else socket_path of --config,
else the default path. `fetch x509 --write DIR` lays files out as SPIRE does (svid.N.pem,
svid.N.key at 0600, bundle.N.pem, federated_bundle.N.M.pem).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import NoReturn, ParamSpec, TypeVar

import click

from insignia.agent.config import DEFAULT_SOCKET_PATH, load_agent_config
from insignia.daemon.config.cli_options import config_option, option
from insignia.daemon.config.loading import CONFIG_EXIT_CODE, ConfigError
from insignia.daemon.files import atomic_write
from insignia.daemon.times import format_time
from insignia.keys import private_key_to_pem
from insignia.workloadapi import (
    InvalidEndpoint,
    WorkloadApiClient,
    WorkloadApiError,
    X509Context,
    endpoint_from_env,
    parse_endpoint,
)

P = ParamSpec("P")
R = TypeVar("R")


def _fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"insignia-agent: {message}", err=True)
    sys.exit(code)


def _socket(socket: str | None, config_path: Path | None) -> Path:
    try:
        if socket:
            return parse_endpoint(socket)
        default = DEFAULT_SOCKET_PATH
        if config_path is not None:
            default = load_agent_config(config_path).socket_path
        return endpoint_from_env(default)
    except InvalidEndpoint as exc:
        _fail(str(exc), 2)
    except ConfigError as exc:
        _fail(str(exc), CONFIG_EXIT_CODE)


def _client_options(fn: Callable[P, R]) -> Callable[P, R]:
    fn = option(
        "--timeout", "-timeout", type=float, default=10.0, show_default=True, help="Seconds."
    )(fn)
    fn = config_option("Take the socket path from this agent config.")(fn)
    return option(
        "--socket",
        "-socketPath",
        "socket",
        default=None,
        help=f"Workload API socket [default: $SPIFFE_ENDPOINT_SOCKET, else {DEFAULT_SOCKET_PATH}].",
    )(fn)


def _client(socket: str | None, config_path: Path | None, timeout: float) -> WorkloadApiClient:
    return WorkloadApiClient(_socket(socket, config_path), timeout=timeout)


def _print_context(context: X509Context) -> None:
    for svid in context.svids:
        click.echo(f"SPIFFE ID:\t\t{svid.spiffe_id}")
        if svid.hint:
            click.echo(f"Hint:\t\t\t{svid.hint}")
        click.echo(f"SVID Valid After:\t{format_time(svid.leaf.not_valid_before_utc)}")
        click.echo(f"SVID Valid Until:\t{format_time(svid.expires_at)}")
        bundle = context.bundles.get_bundle_for_trust_domain(svid.spiffe_id.trust_domain)
        for i, ca in enumerate(bundle.x509_authorities if bundle else (), start=1):
            click.echo(f"CA #{i} Valid After:\t{format_time(ca.not_valid_before_utc)}")
            click.echo(f"CA #{i} Valid Until:\t{format_time(ca.not_valid_after_utc)}")
        click.echo()


def write_x509_context(context: X509Context, directory: Path) -> list[Path]:
    """Write SVIDs, keys (0600) and bundles the way `spire-agent api fetch -write` does."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for i, svid in enumerate(context.svids):
        files = {
            f"svid.{i}.pem": (svid.chain_pem(), 0o644),
            f"svid.{i}.key": (private_key_to_pem(svid.private_key), 0o600),
        }
        td = svid.spiffe_id.trust_domain
        bundle = context.bundles.get_bundle_for_trust_domain(td)
        files[f"bundle.{i}.pem"] = (bundle.x509_pem() if bundle else b"", 0o644)
        federated = [b for b in context.bundles if b.trust_domain != td]
        for j, fed in enumerate(federated):
            files[f"federated_bundle.{i}.{j}.pem"] = (fed.x509_pem(), 0o644)
        for name, (data, mode) in files.items():
            atomic_write(directory / name, data, mode)
            written.append(directory / name)
    return written


@click.group()
def api() -> None:
    """Talk to a Workload API (this agent's or any SPIFFE one)."""


@api.group()
def fetch() -> None:
    """Fetch SVIDs once."""


@fetch.command("x509")
@_client_options
@option(
    "--write",
    "-write",
    "write_dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="Also write svid.N.pem, svid.N.key (0600) and bundle.N.pem into this directory.",
)
def fetch_x509(
    socket: str | None, config_path: Path | None, timeout: float, write_dir: Path | None
) -> None:
    """Fetch X.509-SVIDs and bundles; print them, and with --write save them as PEM files."""
    started = time.perf_counter()
    with _client(socket, config_path, timeout) as client:
        try:
            context = client.fetch_x509_context()
        except WorkloadApiError as exc:
            _fail(f"fetching X.509-SVIDs failed: {exc}")
    elapsed = time.perf_counter() - started
    n = len(context.svids)
    click.echo(f"Received {n} svid{'s' if n != 1 else ''} after {elapsed:.3f}s\n")
    _print_context(context)
    if write_dir is not None:
        for path in write_x509_context(context, write_dir):
            click.echo(f"Wrote {path}")


@fetch.command("jwt")
@_client_options
@option("--audience", "-audience", "audiences", multiple=True, required=True, help="Repeatable.")
@option("--spiffe-id", "-spiffeID", default=None, help="Only this one of the caller's identities.")
def fetch_jwt(
    socket: str | None,
    config_path: Path | None,
    timeout: float,
    audiences: tuple[str, ...],
    spiffe_id: str | None,
) -> None:
    """Fetch JWT-SVIDs whose aud holds every --audience."""
    with _client(socket, config_path, timeout) as client:
        try:
            svids = client.fetch_jwt_svids(list(audiences), spiffe_id)
        except WorkloadApiError as exc:
            _fail(f"fetching JWT-SVIDs failed: {exc}")
    for svid in svids:
        click.echo(f"token({svid.spiffe_id}):")
        click.echo(f"\t{svid.token}")


@fetch.command("wit")
@_client_options
@option("--spiffe-id", "-spiffeID", default=None, help="Only this one of the caller's identities.")
def fetch_wit(
    socket: str | None, config_path: Path | None, timeout: float, spiffe_id: str | None
) -> None:
    """Fetch WIT-SVIDs (incubating); prints each token, never its private key."""
    with _client(socket, config_path, timeout) as client:
        try:
            credentials = client.fetch_wit_svids(spiffe_id)
        except WorkloadApiError as exc:
            _fail(f"fetching WIT-SVIDs failed: {exc}")
    for credential in credentials:
        click.echo(f"wit({credential.spiffe_id}, key {credential.alg}):")
        click.echo(f"\t{credential.token}")


@api.group()
def validate() -> None:
    """Validate credentials through the Workload API."""


@validate.command("jwt")
@_client_options
@option("--audience", "-audience", required=True)
@option("--svid", "-svid", "token", required=True, help="The JWT-SVID (compact JWS).")
def validate_jwt(
    socket: str | None, config_path: Path | None, timeout: float, audience: str, token: str
) -> None:
    """Ask the agent to validate a JWT-SVID for one audience."""
    with _client(socket, config_path, timeout) as client:
        try:
            spiffe_id, claims = client.validate_jwt_svid(token, audience)
        except WorkloadApiError as exc:
            _fail(f"SVID is not valid: {exc}")
    click.echo("SVID is valid.")
    click.echo(f"SPIFFE ID : {spiffe_id}")
    click.echo(f"Claims    : {json.dumps(claims, sort_keys=True)}")


@api.command()
@_client_options
def watch(socket: str | None, config_path: Path | None, timeout: float) -> None:
    """Print every X.509 update as it arrives, until interrupted."""
    with _client(socket, config_path, timeout) as client:
        try:
            for context in client.watch_x509_context():
                n = len(context.svids)
                now = format_time(datetime.now(UTC))
                click.echo(f"Received {n} svid{'s' if n != 1 else ''} at {now}")
                _print_context(context)
        except WorkloadApiError as exc:
            _fail(f"watch ended: {exc}")
        except KeyboardInterrupt:
            return
