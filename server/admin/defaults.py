"""Where the admin socket is unless `admin_socket` says otherwise: one constant for the server's
config and the admin CLI, so a CLI command does not import the config's loader and checks."""

from __future__ import annotations

from pathlib import Path

DEFAULT_ADMIN_SOCKET = Path("/run/insignia/server/admin.sock")
