"""The daemons' dependencies come with an extra (`insignia[agent]`, `insignia[server]`), not with
the SDK. A daemon started from an SDK-only install says which extra is missing, in one line,
instead of a traceback from its first import."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable

AGENT_MODULES = ("grpc_reflection", "msgspec", "click", "structlog", "prometheus_client", "h11")
# psycopg is in the server extra too, but only a PostgreSQL datastore imports it.
SERVER_MODULES = (
    "msgspec",
    "click",
    "structlog",
    "prometheus_client",
    "h11",
    "sqlalchemy",
    "alembic",
)


def _absent(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is None
    except ImportError:
        return True


def missing(modules: Iterable[str]) -> list[str]:
    """The top-level modules of `modules` that this interpreter cannot import."""
    return [m for m in modules if _absent(m)]


def require_extra(extra: str, modules: Iterable[str]) -> None:
    """Exit with one line naming the extra when any of `modules` is missing."""
    if absent := missing(modules):
        raise SystemExit(
            f"insignia-{extra} needs the {extra} extra (missing {', '.join(absent)}): "
            f"pip install 'insignia[{extra}]'"
        )
