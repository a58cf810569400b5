"""The agent daemon and its CLI."""

from insignia.grpc_core_logging import quiet_grpc_core

# Before any agent module imports grpc: see insignia.grpc_core_logging.
quiet_grpc_core()
