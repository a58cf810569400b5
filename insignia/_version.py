"""The package version, read by setuptools at build time (pyproject `dynamic`) and by the CLIs.

A constant rather than `importlib.metadata.version()`: that import and the metadata scan cost
about 0.1 s on every start of every process that imports `insignia`.
"""

__version__ = "0.1.0"
