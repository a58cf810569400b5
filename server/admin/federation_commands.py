"""`insignia-server federation create|list|show|update|delete|refresh` and the federated
bundle commands `bundle set|list|delete` (SPIRE's verbs; its flag spellings work too)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from insignia_proto import admin_pb2

from insignia.daemon.config.cli_options import option
from insignia.daemon.times import format_time
from insignia.server.admin.client import admin_options, call, emit, fail, to_dict
from insignia.server.admin.commands import bundle
from insignia.server.federation.relationship import BUNDLE_FORMATS, PROFILES

F = TypeVar("F", bound=Callable[..., Any])


def _plural(count: int, noun: str) -> str:
    if count == 1:
        return f"1 {noun}"
    if noun.endswith("y") and noun[-2:-1] not in "aeiou":  # entry, authority; not key
        return f"{count} {noun[:-1]}ies"
    return f"{count} {noun}s"


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        fail(f"{path}: {exc.strerror or exc}")


def _relationship_text(r: admin_pb2.FederationRelationship) -> str:
    lines = [
        f"Trust domain        : {r.trust_domain}",
        f"Bundle endpoint URL : {r.bundle_endpoint_url}",
        f"Profile             : {r.profile}",
    ]
    if r.endpoint_spiffe_id:
        lines.append(f"Endpoint SPIFFE ID  : {r.endpoint_spiffe_id}")
    if r.trust_domain_bundle:
        keys = json.loads(r.trust_domain_bundle).get("keys", [])
        lines.append(f"Bootstrap bundle    : {_plural(len(keys), 'key')}")
    lines.append(f"Declared in         : {'config file' if r.from_config else 'datastore'}")
    if r.updated_at:
        lines.append(f"Updated at          : {format_time(r.updated_at)}")
    return "\n".join(lines)


@click.group()
def federation() -> None:
    """Federation relationships: other trust domains whose bundles this server fetches."""


def _trust_domain_option(fn: F) -> F:
    return option("--trust-domain", "-trustDomain", required=True, help="The peer trust domain.")(
        fn
    )


def _relationship_options(required: bool) -> Callable[[F], F]:
    def decorate(fn: F) -> F:
        for decorator in reversed(
            [
                option(
                    "--bundle-endpoint-url",
                    "-bundleEndpointURL",
                    required=required,
                    help="The peer's bundle endpoint, https://host[:port]/path.",
                ),
                option(
                    "--profile",
                    "-bundleEndpointProfile",
                    type=click.Choice(PROFILES),
                    default="https_spiffe" if required else None,
                    show_default=required,
                    help="How the endpoint authenticates.",
                ),
                option(
                    "--endpoint-spiffe-id",
                    "-endpointSpiffeID",
                    help="The endpoint's SPIFFE ID (https_spiffe).",
                ),
                option(
                    "--trust-domain-bundle",
                    "-trustDomainBundlePath",
                    type=click.Path(path_type=Path, dir_okay=False),
                    help="Bundle that authenticates the endpoint until the first fetch "
                    "(https_spiffe).",
                ),
                option(
                    "--trust-domain-bundle-format",
                    "-trustDomainBundleFormat",
                    type=click.Choice(BUNDLE_FORMATS),
                    default="spiffe",
                    show_default=True,
                ),
            ]
        ):
            fn = decorator(fn)
        return fn

    return decorate


@federation.command("create")
@_trust_domain_option
@_relationship_options(required=True)
@admin_options
def federation_create(
    socket_path: Path,
    as_json: bool,
    trust_domain: str,
    bundle_endpoint_url: str,
    profile: str,
    endpoint_spiffe_id: str | None,
    trust_domain_bundle: Path | None,
    trust_domain_bundle_format: str,
) -> None:
    """Federate with TRUST_DOMAIN: fetch its bundle from its bundle endpoint from now on."""
    request = admin_pb2.FederationRelationship(
        trust_domain=trust_domain,
        bundle_endpoint_url=bundle_endpoint_url,
        profile=profile,
        endpoint_spiffe_id=endpoint_spiffe_id or "",
        trust_domain_bundle=_read(trust_domain_bundle) if trust_domain_bundle else b"",
        trust_domain_bundle_format=trust_domain_bundle_format,
    )
    response = call(socket_path, "CreateFederationRelationship", request)
    emit(as_json, response, lambda: _relationship_text(response))


@federation.command("list")
@admin_options
def federation_list(socket_path: Path, as_json: bool) -> None:
    """Every relationship in force: the config file's and the datastore's."""
    response = call(
        socket_path, "ListFederationRelationships", admin_pb2.ListFederationRelationshipsRequest()
    )
    if as_json:
        click.echo(json.dumps([to_dict(r) for r in response.relationships], indent=2))
        return
    found = response.relationships
    click.echo(f"Found {_plural(len(found), 'federation relationship')}")
    for r in found:
        click.echo("\n" + _relationship_text(r))


def _request(trust_domain: str) -> admin_pb2.FederationRelationshipRequest:
    return admin_pb2.FederationRelationshipRequest(trust_domain=trust_domain)


@federation.command("show")
@_trust_domain_option
@admin_options
def federation_show(socket_path: Path, as_json: bool, trust_domain: str) -> None:
    """Show the relationship with TRUST_DOMAIN."""
    response = call(socket_path, "GetFederationRelationship", _request(trust_domain))
    emit(as_json, response, lambda: _relationship_text(response))


@federation.command("update")
@_trust_domain_option
@_relationship_options(required=False)
@admin_options
def federation_update(
    socket_path: Path,
    as_json: bool,
    trust_domain: str,
    bundle_endpoint_url: str | None,
    profile: str | None,
    endpoint_spiffe_id: str | None,
    trust_domain_bundle: Path | None,
    trust_domain_bundle_format: str,
) -> None:
    """Change the given fields of the relationship with TRUST_DOMAIN."""
    current = call(socket_path, "GetFederationRelationship", _request(trust_domain))
    if bundle_endpoint_url is not None:
        current.bundle_endpoint_url = bundle_endpoint_url
    if profile is not None and profile != current.profile:
        current.profile = profile
        if profile == "https_web":  # what only https_spiffe uses goes with it
            current.endpoint_spiffe_id = ""
            current.trust_domain_bundle = b""
    if endpoint_spiffe_id is not None:
        current.endpoint_spiffe_id = endpoint_spiffe_id
    if trust_domain_bundle is not None:
        current.trust_domain_bundle = _read(trust_domain_bundle)
        current.trust_domain_bundle_format = trust_domain_bundle_format
    response = call(socket_path, "UpdateFederationRelationship", current)
    emit(as_json, response, lambda: _relationship_text(response))


@federation.command("delete")
@_trust_domain_option
@admin_options
def federation_delete(socket_path: Path, as_json: bool, trust_domain: str) -> None:
    """Stop federating with TRUST_DOMAIN; its bundle leaves the workloads."""
    response = call(socket_path, "DeleteFederationRelationship", _request(trust_domain))
    emit(as_json, response, lambda: f"deleted the federation relationship with {trust_domain}")


@federation.command("refresh")
@_trust_domain_option
@admin_options
def federation_refresh(socket_path: Path, as_json: bool, trust_domain: str) -> None:
    """Fetch TRUST_DOMAIN's bundle now and say what came back."""
    r = call(socket_path, "RefreshFederationRelationship", _request(trust_domain))
    emit(
        as_json,
        r,
        lambda: (
            f"{r.trust_domain}: {'new bundle stored' if r.changed else 'bundle unchanged'} "
            f"(sequence {r.sequence}, {_plural(r.x509_authorities, 'X.509 authority')}, "
            f"{_plural(r.jwt_authorities, 'JWT authority')}); "
            f"next refresh in {r.next_refresh_seconds} s"
        ),
    )


# --- federated bundles ------------------------------------------------------------------------


def _id_option(fn: F) -> F:
    return option("--id", "-id", "trust_domain", required=True, help="spiffe://TRUST_DOMAIN")(fn)


@bundle.command("set")
@_id_option
@option(
    "--path",
    "-path",
    type=click.Path(path_type=Path, dir_okay=False),
    required=True,
    help="The bundle file.",
)
@option(
    "--format",
    "-format",
    "fmt",
    type=click.Choice(BUNDLE_FORMATS),
    default="pem",
    show_default=True,
)
@admin_options
def bundle_set(socket_path: Path, as_json: bool, trust_domain: str, path: Path, fmt: str) -> None:
    """Store (or replace) another trust domain's bundle."""
    request = admin_pb2.SetFederatedBundleRequest(
        trust_domain=trust_domain, data=_read(path), format=fmt
    )
    response = call(socket_path, "SetFederatedBundle", request)
    emit(as_json, response, lambda: f"bundle of {response.trust_domain} stored")


@bundle.command("list")
@option("--id", "-id", "trust_domain", help="Only this trust domain's bundle.")
@option(
    "--format",
    "-format",
    "fmt",
    type=click.Choice(BUNDLE_FORMATS),
    default="pem",
    show_default=True,
)
@admin_options
def bundle_list(socket_path: Path, as_json: bool, trust_domain: str | None, fmt: str) -> None:
    """Print the federated bundles (other trust domains')."""
    request = admin_pb2.ListFederatedBundlesRequest(trust_domain=trust_domain or "")
    response = call(socket_path, "ListFederatedBundles", request)
    if as_json:
        click.echo(
            json.dumps(
                {b.trust_domain: json.loads(b.spiffe_bundle) for b in response.bundles}, indent=2
            )
        )
        return
    for b in response.bundles:
        body = b.x509_pem.decode() if fmt == "pem" else b.spiffe_bundle.decode() + "\n"
        click.echo(f"# spiffe://{b.trust_domain}\n{body}", nl=False)


@bundle.command("delete")
@_id_option
@option(
    "--mode",
    "-mode",
    type=click.Choice(["restrict", "delete", "dissociate"]),
    default="restrict",
    show_default=True,
    help="Entries federating with it: refuse (restrict), delete them, or dissociate them.",
)
@admin_options
def bundle_delete(socket_path: Path, as_json: bool, trust_domain: str, mode: str) -> None:
    """Delete another trust domain's stored bundle."""
    request = admin_pb2.DeleteFederatedBundleRequest(trust_domain=trust_domain, mode=mode)
    r = call(socket_path, "DeleteFederatedBundle", request)
    done = {"delete": "deleted", "dissociate": "dissociated"}.get(mode, "")
    emit(
        as_json,
        r,
        lambda: (
            f"deleted the bundle of {r.trust_domain}"
            + (f"; {_plural(len(r.entry_ids), 'entry')} {done}" if r.entry_ids else "")
        ),
    )
