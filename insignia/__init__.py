"""Insignia: SPIFFE workload identity (server CA, node agent, Workload API SDK)."""

from insignia._version import __version__

__all__ = ["__version__"]
