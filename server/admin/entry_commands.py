"""`insignia-server entry create|show|update|delete`."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import click
import grpc
from insignia_proto import admin_pb2

from insignia.daemon.config.cli_options import TimeParam, id_argument, option
from insignia.daemon.reserved_ids import SERVER_PATH
from insignia.daemon.times import format_time
from insignia.selectors import InvalidSelector
from insignia.server.admin.client import (
    CALL_TIMEOUT,
    MAX_TTL_SECONDS,
    admin_options,
    admin_stub,
    call,
    count_command,
    emit,
    fail,
    to_dict,
)
from insignia.spiffeid import SpiffeId


def _entry_text(e: admin_pb2.Entry) -> str:
    lines = [
        f"Entry ID       : {e.id}",
        f"SPIFFE ID      : {e.spiffe_id}",
        f"Parent ID      : {e.parent_id}",
        f"Revision       : {e.revision}",
        f"X509-SVID TTL  : {e.x509_svid_ttl or 'default'}",
        f"JWT-SVID TTL   : {e.jwt_svid_ttl or 'default'}",
        f"WIT-SVID TTL   : {e.wit_svid_ttl or 'default'}",
    ]
    lines += [f"Selector       : {s}" for s in e.selectors]
    lines += [f"DNS name       : {d}" for d in e.dns_names]
    lines += [f"FederatesWith  : {td}" for td in e.federates_with]
    if e.hint:
        lines.append(f"Hint           : {e.hint}")
    if e.admin:
        lines.append("Admin          : true")
    if e.downstream:
        lines.append("Downstream     : true")
    if e.expires_at:
        lines.append(f"Expires at     : {format_time(e.expires_at)}")
    if e.created_at:
        lines.append(f"Created at     : {format_time(e.created_at)}")
    return "\n".join(lines)


def entry_fields(fn: Any) -> Any:
    for decorator in reversed(
        [
            option("--spiffe-id", "-spiffeID", help="SPIFFE ID the entry issues."),
            option(
                "--parent-id", "-parentID", help="Agent ID, node alias ID or parent workload ID."
            ),
            option(
                "--selector", "-selector", "selectors", multiple=True, help="type:value (repeat)."
            ),
            option(
                "--x509-svid-ttl",
                "-x509SVIDTTL",
                type=click.IntRange(min=0, max=MAX_TTL_SECONDS),
                help="Seconds.",
            ),
            option(
                "--jwt-svid-ttl",
                "-jwtSVIDTTL",
                type=click.IntRange(min=0, max=MAX_TTL_SECONDS),
                help="Seconds.",
            ),
            option(
                "--wit-svid-ttl",
                type=click.IntRange(min=0, max=MAX_TTL_SECONDS),
                help="Seconds (0: default_jwt_svid_ttl).",
            ),
            option("--dns", "-dns", "dns_names", multiple=True, help="DNS SAN (repeat)."),
            option("--hint", "-hint", help="Hint for workloads holding several SVIDs."),
            option(
                "--federates-with", "-federatesWith", multiple=True, help="Trust domain (repeat)."
            ),
            option("--admin/--no-admin", default=None, help="Admin workload."),
            option("--downstream/--no-downstream", default=None, help="Downstream."),
            option(
                "--expires-at",
                "-entryExpiry",
                type=TimeParam(),
                help="RFC 3339 (2026-12-04T09:00:00Z), +DURATION from now (+30d), or Unix seconds.",
            ),
        ]
    ):
        fn = decorator(fn)
    return fn


def _apply(entry: admin_pb2.Entry, given: dict[str, Any]) -> admin_pb2.Entry:
    """Set the fields given on the command line; repeated options replace the whole list."""
    for name, value in given.items():
        if value is None or (isinstance(value, tuple) and not value):
            continue
        if isinstance(value, tuple):
            field = getattr(entry, name)
            del field[:]
            field.extend(value)
        else:
            setattr(entry, name, value)
    return entry


def _load_file(path: Path) -> list[admin_pb2.Entry]:
    from google.protobuf.json_format import ParseDict, ParseError  # for --file only

    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        fail(f"{path}: cannot read entries JSON: {exc}")
    items = doc.get("entries") if isinstance(doc, dict) else doc
    if not isinstance(items, list):
        fail(f'{path}: expected a list of entries or {{"entries": [...]}}')
    entries = []
    for i, item in enumerate(items):
        try:
            entries.append(ParseDict(_from_spire(item), admin_pb2.Entry()))
        except (ParseError, ValueError) as exc:
            fail(f"{path}: entries[{i}]: {exc}")
    return entries


def _from_spire(item: Any) -> Any:
    """SPIRE's entry JSON (`spire-server entry create -data`) in our format: selectors as
    {"type": "unix", "value": "uid:1001"} objects, IDs as strings or {"trust_domain", "path"}.
    Our own format (selectors as "type:value" strings) passes through unchanged."""
    if not isinstance(item, dict):
        return item
    out = dict(item)
    for key in ("spiffe_id", "parent_id"):
        value = out.get(key)
        if isinstance(value, dict):
            td, spiffe_path = value.get("trust_domain"), value.get("path", "")
            if not isinstance(td, str) or not isinstance(spiffe_path, str):
                raise ValueError(f'{key}: expected "spiffe://..." or {{"trust_domain", "path"}}')
            out[key] = f"spiffe://{td}{spiffe_path}"
    selectors = out.get("selectors")
    if isinstance(selectors, list):
        out["selectors"] = [_selector_text(s) for s in selectors]
    return out


def _selector_text(selector: Any) -> Any:
    if not isinstance(selector, dict):
        return selector
    kind, value = selector.get("type"), selector.get("value")
    if (
        not isinstance(kind, str)
        or not isinstance(value, str)
        or set(selector) != {"type", "value"}
    ):
        raise ValueError(f'selector {json.dumps(selector)}: expected {{"type": ..., "value": ...}}')
    return f"{kind}:{value}"


def _check(entries: list[admin_pb2.Entry]) -> None:
    """Refuse, before anything is sent, what the server would store but no agent could ever
    match: a selector the installed attestors never emit. (An unknown --federates-with is
    the server's to refuse: only it knows its relationships and stored bundles.)"""
    from insignia.attestors.registry import check_entry_selector, installed_selector_keys

    known = installed_selector_keys()
    for i, e in enumerate(entries):
        where = f"entries[{i}]: " if len(entries) > 1 else ""
        for text in e.selectors:
            try:
                check_entry_selector(text, known)
            except InvalidSelector as exc:
                fail(f"{where}{exc}", 2)


@click.group()
def entry() -> None:
    """Manage registration entries."""


@entry.command("create")
@entry_fields
@option(
    "--file",
    "-data",
    "file_path",
    type=click.Path(path_type=Path, dir_okay=False),
    help='Create every entry in this JSON file, all or none: {"entries": [...]} in our '
    "format or SPIRE's (`spire-server entry create -data`).",
)
@admin_options
def create(socket_path: Path, as_json: bool, file_path: Path | None, **fields: Any) -> None:
    """Create one entry (or a batch from --file); prints the new entry IDs."""
    if file_path is not None:
        if any(v not in (None, ()) for v in fields.values()):
            fail("--file cannot be combined with entry fields")
        entries = _load_file(file_path)
    else:
        for required in ("spiffe_id", "parent_id", "selectors"):
            if not fields[required]:
                fail(f"--{required.replace('_', '-').rstrip('s')} is required")
        entries = [_apply(admin_pb2.Entry(), fields)]
    _check(entries)
    response = call(socket_path, "CreateEntries", admin_pb2.CreateEntriesRequest(entries=entries))
    emit(as_json, response, lambda: "\n".join(e.id for e in response.entries))
    for parent in _unknown_parents(socket_path, response.entries):
        click.echo(
            f"warning: parent ID {parent} names no attested agent, node alias or entry: "
            "no agent receives this entry until one does (check --parent-id)",
            err=True,
        )


def _unknown_parents(socket_path: Path, entries: Iterable[admin_pb2.Entry]) -> list[str]:
    """Parents that are neither the server (node aliases), an attested agent nor another
    entry's SPIFFE ID: such an entry is stored but never served, usually a typo."""
    unknown = []
    with admin_stub(socket_path) as stub:
        for parent in dict.fromkeys(e.parent_id for e in entries):
            if SpiffeId.parse(parent).path == SERVER_PATH:
                continue
            try:
                stub.GetAgent(admin_pb2.AgentRequest(id=parent), timeout=CALL_TIMEOUT)
                continue
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.NOT_FOUND:
                    continue  # unknown rather than missing: say nothing rather than guess
            try:
                request = admin_pb2.ListEntriesRequest(spiffe_id=parent)
                found = stub.ListEntries(request, timeout=CALL_TIMEOUT).entries
            except grpc.RpcError:
                continue
            if not found:
                unknown.append(parent)
    return unknown


count_command(entry, "CountEntries", "registration entry", "registration entries")


@entry.command("show")
@option("--id", "-entryID", "entry_id", help="Show only this entry.")
@option("--spiffe-id", "-spiffeID", help="Only entries with this SPIFFE ID.")
@option("--parent-id", "-parentID", help="Only entries with this parent ID.")
@option(
    "--selector", "-selector", "selectors", multiple=True, help="Only entries holding all of these."
)
@admin_options
def show(
    socket_path: Path,
    as_json: bool,
    entry_id: str | None,
    spiffe_id: str | None,
    parent_id: str | None,
    selectors: tuple[str, ...],
) -> None:
    """List entries matching every filter given."""
    if entry_id:
        found = [call(socket_path, "GetEntry", admin_pb2.GetEntryRequest(id=entry_id))]
    else:
        request = admin_pb2.ListEntriesRequest(
            spiffe_id=spiffe_id or "", parent_id=parent_id or "", selectors=list(selectors)
        )
        found = list(call(socket_path, "ListEntries", request).entries)
    if as_json:
        click.echo(json.dumps({"entries": [to_dict(e) for e in found]}, indent=2))
    else:
        click.echo(f"Found {len(found)} entr{'y' if len(found) == 1 else 'ies'}")
        for e in found:
            click.echo("\n" + _entry_text(e))


@entry.command("update")
@id_argument("entry_id", "-entryID")
@entry_fields
@admin_options
def update(socket_path: Path, as_json: bool, entry_id: str, **fields: Any) -> None:
    """Change the given fields of ENTRY_ID (lists given replace the old lists)."""
    current = call(socket_path, "GetEntry", admin_pb2.GetEntryRequest(id=entry_id))
    revision = current.revision
    changed = _apply(current, fields)
    _check([changed])
    request = admin_pb2.UpdateEntryRequest(entry=changed, expected_revision=revision)
    response = call(socket_path, "UpdateEntry", request)
    emit(as_json, response, lambda: _entry_text(response))


@entry.command("delete")
@id_argument("entry_id", "-entryID")
@admin_options
def delete(socket_path: Path, as_json: bool, entry_id: str) -> None:
    """Delete ENTRY_ID."""
    response = call(socket_path, "DeleteEntry", admin_pb2.DeleteEntryRequest(id=entry_id))
    emit(as_json, response, lambda: f"deleted {response.entry.id}")
