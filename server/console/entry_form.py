"""The entry form: its fields to an admin-API `Entry`, checked as `insignia-server entry
create|update` checks them, each problem worded as the CLI words it and placed beside its
field.

The order is the CLI's: required fields, then the installed attestors' selector check, then
the server's own validation (the admin API's `InvalidEntry`, which names the field).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from insignia_proto import admin_pb2

from insignia.attestors.registry import check_entry_selector, installed_selector_keys
from insignia.daemon.times import format_time, parse_time
from insignia.selectors import InvalidSelector
from insignia.server.admin.api import AdminRefused
from insignia.server.admin.client import MAX_TTL_SECONDS
from insignia.server.entries import InvalidEntry

TEXT_FIELDS = ("spiffe_id", "parent_id", "hint")
LIST_FIELDS = ("selectors", "dns_names", "federates_with")  # one value per line
TTL_FIELDS = ("x509_svid_ttl", "jwt_svid_ttl", "wit_svid_ttl")
FLAG_FIELDS = ("admin", "downstream")
FIELDS = (*TEXT_FIELDS, *LIST_FIELDS, *TTL_FIELDS, *FLAG_FIELDS, "expires_at")
_OPTION = {  # the CLI's option for each field, as its messages name them
    "spiffe_id": "--spiffe-id",
    "parent_id": "--parent-id",
    "selectors": "--selector",
    "x509_svid_ttl": "--x509-svid-ttl",
    "jwt_svid_ttl": "--jwt-svid-ttl",
    "wit_svid_ttl": "--wit-svid-ttl",
    "expires_at": "--expires-at",
}
_INDEXED = re.compile(r"^entries\[\d+\]\.|\[\d+\]$")


@dataclass
class EntryForm:
    """What the operator typed (shown again) and the message beside each refused field."""

    values: dict[str, str] = field(default_factory=lambda: dict.fromkeys(FIELDS, ""))
    errors: dict[str, str] = field(default_factory=dict)
    problem: str = ""  # a refusal that names no field (a duplicate entry, a stale revision)

    @classmethod
    def of(cls, entry: admin_pb2.Entry) -> EntryForm:
        """The form for editing a stored entry."""
        form = cls()
        for name in TEXT_FIELDS:
            form.values[name] = getattr(entry, name)
        for name in LIST_FIELDS:
            form.values[name] = "\n".join(getattr(entry, name))
        for name in TTL_FIELDS:
            form.values[name] = str(getattr(entry, name) or "")
        for name in FLAG_FIELDS:
            form.values[name] = "on" if getattr(entry, name) else ""
        if entry.expires_at:
            form.values["expires_at"] = format_time(entry.expires_at).split(" ")[0]
        return form

    def refused(self, refusal: AdminRefused) -> None:
        """Place the admin API's refusal beside its field, in the CLI's words."""
        message = f"error: {refusal}"
        cause = refusal.cause
        name = _INDEXED.sub("", cause.field) if isinstance(cause, InvalidEntry) else ""
        if name in FIELDS:
            self.errors[name] = message
        else:
            self.problem = message


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def read_entry_form(
    posted: Mapping[str, Sequence[str]], entry: admin_pb2.Entry
) -> tuple[admin_pb2.Entry, EntryForm]:
    """Fill `entry` (a new one, or the stored one being edited) from the posted fields;
    `form.errors` says what the CLI would refuse before calling the server."""
    form = EntryForm()
    for name in FIELDS:
        form.values[name] = (posted.get(name) or [""])[0]
    values = form.values
    for name in TEXT_FIELDS:
        setattr(entry, name, values[name].strip())
    for name in LIST_FIELDS:
        del getattr(entry, name)[:]
        getattr(entry, name).extend(_lines(values[name]))
    for name in FLAG_FIELDS:
        setattr(entry, name, values[name] == "on")
    for name in TTL_FIELDS:
        text = values[name].strip() or "0"
        if not text.isdigit() or int(text) > MAX_TTL_SECONDS:
            form.errors[name] = (
                f"error: {_OPTION[name]}: {text[:64]!r} is not in the range 0<=x<={MAX_TTL_SECONDS}"
            )
        else:
            setattr(entry, name, int(text))
    entry.expires_at = 0
    if values["expires_at"].strip():
        try:
            entry.expires_at = int(parse_time(values["expires_at"]).timestamp())
        except ValueError as exc:
            form.errors["expires_at"] = f"error: {_OPTION['expires_at']}: {exc}"
    for required in ("spiffe_id", "parent_id", "selectors"):
        if not values[required].strip():
            form.errors[required] = f"error: {_OPTION[required]} is required"
    if "selectors" not in form.errors:
        known = installed_selector_keys()
        for text in entry.selectors:
            try:
                check_entry_selector(text, known)
            except InvalidSelector as exc:
                form.errors["selectors"] = f"error: {exc}"
                break
    return entry, form
