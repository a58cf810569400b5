"""Versioned, checksummed state files: a reader uses what the writer wrote, or nothing.

A file is one header line, `insignia-sealed <kind> v<version> sha256=<hex>`, then a JSON
object that names its trust domain. A file that is truncated, altered, of another kind or
version, or of another trust domain is refused with the reason; `read_sealed` then removes it
with one warning line, so a bad file costs a fresh start, never a crash and never its content
served. Writes go through `atomic_write` (0600, temp + fsync + rename + directory fsync).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Final

from insignia.daemon.files import atomic_write
from insignia.daemon.logs import get_logger

log = get_logger(__name__)

_HEADER: Final = re.compile(rb"insignia-sealed ([a-z_]+) v(\d+) sha256=([0-9a-f]{64})")


class SealedFileRejected(ValueError):
    """The file is not a usable state file of this kind, version and trust domain."""


def seal(kind: str, version: int, trust_domain: str, payload: dict[str, Any]) -> bytes:
    body = json.dumps({"trust_domain": trust_domain, **payload}, separators=(",", ":")).encode()
    digest = hashlib.sha256(body).hexdigest()
    return f"insignia-sealed {kind} v{version} sha256={digest}\n".encode() + body


def unseal(data: bytes, kind: str, version: int, trust_domain: str) -> dict[str, Any]:
    """The payload of a sealed file, or SealedFileRejected saying what is wrong with it."""
    header, newline, body = data.partition(b"\n")
    match = _HEADER.fullmatch(header)
    if not newline or match is None:
        raise SealedFileRejected("not an insignia state file (no valid header line)")
    if match[1].decode() != kind:
        raise SealedFileRejected(f"holds {match[1].decode()}, expected {kind}")
    if int(match[2]) != version:
        raise SealedFileRejected(f"format v{int(match[2])}, this agent reads v{version}")
    if hashlib.sha256(body).hexdigest() != match[3].decode():
        raise SealedFileRejected("checksum mismatch (truncated or altered)")
    try:
        payload = json.loads(body)
    except ValueError as exc:
        raise SealedFileRejected(f"unreadable content: {exc}") from None
    if not isinstance(payload, dict):
        raise SealedFileRejected("unreadable content: not a JSON object")
    found = payload.pop("trust_domain", None)
    if found != trust_domain:
        raise SealedFileRejected(f"belongs to trust domain {found!r}, not {trust_domain!r}")
    return payload


def write_sealed(
    path: Path, kind: str, version: int, trust_domain: str, payload: dict[str, Any]
) -> None:
    """Blocking: call from a worker thread in trio."""
    atomic_write(path, seal(kind, version, trust_domain, payload))


def read_sealed(path: Path, kind: str, version: int, trust_domain: str) -> dict[str, Any] | None:
    """The payload, or None when the file is missing or was refused (then removed, with one
    warning line). Blocking."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        return unseal(data, kind, version, trust_domain)
    except SealedFileRejected as exc:
        discard(path, str(exc))
        return None


def discard(path: Path, reason: str) -> None:
    """Remove a state file whose content cannot be used, saying why in one warning line."""
    log.warning("state_file.discarded", file=str(path), reason=reason)
    path.unlink(missing_ok=True)
