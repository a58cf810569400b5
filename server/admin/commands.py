"""`insignia-server token|agent|bundle|x509|jwt|authority ...`."""

from __future__ import annotations

import json
from pathlib import Path

import click
from cryptography import x509 as cx509
from cryptography.hazmat.primitives import serialization
from insignia_proto import admin_pb2

from insignia.bundle import load_der_certificates
from insignia.daemon.config.cli_options import id_argument, option
from insignia.daemon.times import format_time
from insignia.keys import KeyType, generate_key, private_key_to_pem, x509_signature_hash
from insignia.server.admin.client import (
    MAX_TTL_SECONDS,
    admin_options,
    call,
    count_command,
    emit,
    fail,
    to_dict,
)
from insignia.spiffeid import SpiffeId


@click.group()
def token() -> None:
    """Join tokens for node attestation."""


@token.command("generate")
@option("--spiffe-id", "-spiffeID", help="Also create an entry giving the agent this ID.")
@option(
    "--ttl",
    "-ttl",
    type=click.IntRange(min=1, max=MAX_TTL_SECONDS),
    help="Seconds (default: join_token_ttl).",
)
@admin_options
def token_generate(
    socket_path: Path, as_json: bool, spiffe_id: str | None, ttl: int | None
) -> None:
    """Create a one-time join token; prints it."""
    request = admin_pb2.CreateJoinTokenRequest(ttl=ttl or 0, spiffe_id=spiffe_id or "")
    response = call(socket_path, "CreateJoinToken", request)
    emit(as_json, response, lambda: response.token)


@click.group()
def agent() -> None:
    """Attested agents."""


def _agent_text(a: admin_pb2.Agent) -> str:
    return "\n".join(
        [
            f"Agent ID     : {a.id}",
            f"Attestor     : {a.attestor}",
            f"SVID serial  : {a.serial}",
            f"Attested at  : {format_time(a.attested_at)}",
            f"Expires at   : {format_time(a.expires_at)}",
            f"Banned       : {str(a.banned).lower()}",
            f"Reattestable : {str(a.reattestable).lower()}",
            *[f"Selector     : {s}" for s in a.selectors],
        ]
    )


@agent.command("list")
@admin_options
def agent_list(socket_path: Path, as_json: bool) -> None:
    """List attested agents."""
    response = call(socket_path, "ListAgents", admin_pb2.ListAgentsRequest())
    emit(
        as_json,
        response,
        lambda: (
            f"Found {len(response.agents)} agent(s)"
            + "".join("\n\n" + _agent_text(a) for a in response.agents)
        ),
    )


def _agent_action(name: str, method: str, help_text: str) -> click.Command:
    @agent.command(name, help=help_text)
    @id_argument("agent_id", "-spiffeID")
    @admin_options
    def command(socket_path: Path, as_json: bool, agent_id: str) -> None:
        response = call(socket_path, method, admin_pb2.AgentRequest(id=agent_id))
        emit(as_json, response, lambda: _agent_text(response))

    return command


count_command(agent, "CountAgents", "attested agent", "attested agents")
_agent_action("show", "GetAgent", "Show one agent.")
_agent_action("evict", "EvictAgent", "Forget an agent: it must attest again.")
_agent_action("ban", "BanAgent", "Refuse an agent for good.")


@click.group()
def bundle() -> None:
    """The trust domain's bundle."""


@bundle.command("show")
@option(
    "--format",
    "-format",
    "fmt",
    type=click.Choice(["pem", "spiffe"]),
    default="pem",
    show_default=True,
)
@admin_options
def bundle_show(socket_path: Path, as_json: bool, fmt: str) -> None:
    """Print the bundle: X.509 authorities as PEM, or the SPIFFE bundle JSON."""
    response = call(socket_path, "GetBundle", admin_pb2.GetBundleRequest())
    if as_json:
        click.echo(json.dumps(json.loads(response.spiffe_bundle), indent=2))
    elif fmt == "pem":
        click.echo(response.x509_pem.decode(), nl=False)
    else:
        click.echo(response.spiffe_bundle.decode())


count_command(bundle, "CountBundles", "bundle", "bundles")


@click.group()
def x509() -> None:
    """X509-SVIDs."""


@x509.command("mint")
@option("--spiffe-id", "-spiffeID", required=True)
@option(
    "--ttl",
    "-ttl",
    type=click.IntRange(min=1, max=MAX_TTL_SECONDS),
    help="Seconds (default_x509_svid_ttl).",
)
@option("--dns", "-dns", "dns_names", multiple=True, help="DNS SAN (repeat).")
@click.option("--key-type", type=click.Choice([k.value for k in KeyType]), default="ec-p256")
@option(
    "--write",
    "-write",
    "write_dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="Write svid.pem, svid.key and bundle.pem here instead of printing.",
)
@admin_options
def x509_mint(
    socket_path: Path,
    as_json: bool,
    spiffe_id: str,
    ttl: int | None,
    dns_names: tuple[str, ...],
    key_type: str,
    write_dir: Path | None,
) -> None:
    """Mint an X509-SVID; the private key is made here and never sent."""
    try:
        sid = SpiffeId.parse(spiffe_id)
    except ValueError as exc:
        fail(str(exc))
    key = generate_key(KeyType(key_type))
    csr = (
        cx509.CertificateSigningRequestBuilder()
        .subject_name(cx509.Name([]))
        .add_extension(
            cx509.SubjectAlternativeName([cx509.UniformResourceIdentifier(str(sid))]),
            critical=False,
        )
        .sign(key, x509_signature_hash(key))
    )
    request = admin_pb2.MintX509SVIDRequest(
        csr=csr.public_bytes(serialization.Encoding.DER),
        spiffe_id=str(sid),
        ttl=ttl or 0,
        dns_names=list(dns_names),
    )
    response = call(socket_path, "MintX509SVID", request)
    files = {
        "svid.pem": _pem(response.svid_chain),
        "svid.key": private_key_to_pem(key),
        "bundle.pem": _pem(response.bundle),
    }
    if write_dir is not None:
        from insignia.daemon.files import atomic_write  # it logs: structlog only when writing

        write_dir.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():  # each file atomic; the key 0600
            atomic_write(write_dir / name, data, 0o600 if name.endswith(".key") else 0o644)
        click.echo(f"wrote {', '.join(str(write_dir / n) for n in files)}")
    elif as_json:
        click.echo(
            json.dumps(
                {k.replace(".", "_"): v.decode() for k, v in files.items()}
                | {"expires_at": response.expires_at},
                indent=2,
            )
        )
    else:
        click.echo(b"".join(files.values()).decode(), nl=False)


@click.group()
def jwt() -> None:
    """JWT-SVIDs."""


@jwt.command("mint")
@option("--spiffe-id", "-spiffeID", required=True)
@option("--audience", "-audience", multiple=True, required=True, help="Audience (repeat).")
@option(
    "--ttl",
    "-ttl",
    type=click.IntRange(min=1, max=MAX_TTL_SECONDS),
    help="Seconds (default_jwt_svid_ttl).",
)
@admin_options
def jwt_mint(
    socket_path: Path, as_json: bool, spiffe_id: str, audience: tuple[str, ...], ttl: int | None
) -> None:
    """Mint a JWT-SVID and print it."""
    request = admin_pb2.MintJWTSVIDRequest(
        spiffe_id=spiffe_id, audience=list(audience), ttl=ttl or 0
    )
    response = call(socket_path, "MintJWTSVID", request)
    emit(as_json, response, lambda: response.token)


@click.group()
def authority() -> None:
    """Signing authorities: show, prepare, activate, taint, revoke."""


_METHODS = {
    "show": "ListAuthorities",
    "prepare": "PrepareAuthority",
    "activate": "ActivateAuthority",
    "taint": "TaintAuthority",
    "revoke": "RevokeAuthority",
}


def _pem(der: bytes) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in load_der_certificates(der))


def _authority_text(a: admin_pb2.Authority, answering: str = "") -> str:
    """One authority; with several servers, the owner's id (as `server list` shows it), so
    that another server's key can be tainted or revoked from this listing."""
    flag = " tainted" if a.tainted else ""
    text = f"{a.authority_id}  {a.state}{flag}  not after {format_time(a.not_after)}"
    if a.server_id:
        text += f"  server {a.server_id}" + ("  (this server)" if a.server_id == answering else "")
    return text


def _authority_group(kind: str, value: int) -> None:
    @authority.command(
        kind,
        help=f"{kind.upper()} authorities: ACTION is one of "
        "show, prepare, activate, taint, revoke.",
    )
    @click.argument("action", type=click.Choice(list(_METHODS)))
    @click.argument("authority_id", required=False, default="")
    @admin_options
    def command(socket_path: Path, as_json: bool, action: str, authority_id: str) -> None:
        request = admin_pb2.AuthorityRequest(kind=value, authority_id=authority_id)  # type: ignore[arg-type]
        response = call(socket_path, _METHODS[action], request)
        if action == "show":
            if as_json:
                click.echo(json.dumps(to_dict(response), indent=2))
            else:
                lines = (_authority_text(a, response.server_id) for a in response.authorities)
                click.echo("\n".join(lines))
        else:
            emit(as_json, response, lambda: _authority_text(response))


_authority_group("x509", admin_pb2.X509)
_authority_group("jwt", admin_pb2.JWT)
_authority_group("wit", admin_pb2.WIT)
