"""The JSON documents node attestors exchange over the attestation stream's opaque bytes.

Every message is a strict model (unknown fields refused) decoded here, at the boundary, with
size limits, so a plugin's logic only ever sees well-formed values.
"""

from __future__ import annotations

import base64
import binascii
from typing import Final, TypeVar

import msgspec

from insignia.attestors.interface import AttestationError
from insignia.daemon.config.loading import describe

#: Attestation messages are small (a few certificates at most).
MAX_MESSAGE_BYTES: Final = 64 * 1024


class Message(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """Base for attestation messages: strict types, unknown fields refused."""


M = TypeVar("M", bound=Message)


def encode(message: Message) -> bytes:
    return msgspec.json.encode(message)


def decode(plugin: str, data: bytes, model: type[M]) -> M:
    """`data` parsed as `model`, or AttestationError naming the first problem."""
    if len(data) > MAX_MESSAGE_BYTES:
        raise AttestationError(plugin, f"message of {len(data)} bytes exceeds {MAX_MESSAGE_BYTES}")
    try:
        return msgspec.json.decode(data, type=model)
    except msgspec.ValidationError as exc:
        where, problem = describe(exc)
        raise AttestationError(
            plugin, f"malformed {model.__name__}: {where or 'message'}: {problem}"
        ) from exc
    except msgspec.DecodeError as exc:
        raise AttestationError(plugin, f"malformed {model.__name__}: not JSON: {exc}") from exc


def b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def b64decode(plugin: str, field: str, text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise AttestationError(plugin, f"{field} is not valid base64") from exc
