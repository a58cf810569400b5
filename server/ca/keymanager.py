"""Where the server's CA and JWT private keys live: 0600 files in data_dir, or memory only.

`disk` (the default) keeps keys across restarts, so the published bundle stays valid and
agents need not re-sign everything after an upgrade. `memory` never writes a private key to
disk; after a restart the old authorities stay in the bundle (their public parts are in the
CA journal) until they expire, and fresh keys are prepared and activated at once.
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path
from typing import Protocol

from insignia.daemon.files import atomic_write, ensure_private_dir
from insignia.keys import PrivateKey, private_key_from_pem, private_key_to_pem

_KEY_NAME = re.compile(r"[A-Za-z0-9_-]{1,128}")


class KeyManager(Protocol):
    def store(self, name: str, key: PrivateKey) -> None:
        """Keep `key` under `name`, durably for the disk manager (blocking: use a thread)."""
        ...

    def load(self, name: str) -> PrivateKey | None:
        """The key stored under `name`, or None if this manager does not hold it."""
        ...

    def delete(self, name: str) -> None: ...


def _checked(name: str) -> str:
    if not _KEY_NAME.fullmatch(name):
        raise ValueError(f"key name {name!r}: expected 1-128 of [A-Za-z0-9_-]")
    return name


class MemoryKeyManager:
    def __init__(self) -> None:
        self._keys: dict[str, PrivateKey] = {}

    def store(self, name: str, key: PrivateKey) -> None:
        self._keys[_checked(name)] = key

    def load(self, name: str) -> PrivateKey | None:
        return self._keys.get(_checked(name))

    def delete(self, name: str) -> None:
        self._keys.pop(_checked(name), None)


class DiskKeyManager:
    """PKCS#8 PEM files `<directory>/<name>.pem`, 0600, in a 0700 directory, written atomically."""

    def __init__(self, directory: Path) -> None:
        self.directory = ensure_private_dir(directory)

    def _path(self, name: str) -> Path:
        return self.directory / f"{_checked(name)}.pem"

    def store(self, name: str, key: PrivateKey) -> None:
        atomic_write(self._path(name), private_key_to_pem(key), mode=0o600)

    def load(self, name: str) -> PrivateKey | None:
        try:
            data = self._path(name).read_bytes()
        except FileNotFoundError:
            return None
        return private_key_from_pem(data)

    def delete(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path(name))


def key_manager(kind: str, data_dir: Path) -> KeyManager:
    """The configured key manager (`ca.key_manager`): "disk" or "memory"."""
    if kind == "memory":
        return MemoryKeyManager()
    if kind == "disk":
        return DiskKeyManager(data_dir / "keys")
    raise ValueError(f"unknown key manager {kind!r}; expected disk or memory")
