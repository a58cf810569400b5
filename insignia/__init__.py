"""Insignia: SPIFFE workload identity (server CA, node agent, Workload API SDK)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("insignia")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
