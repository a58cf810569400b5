"""The server daemon and its CLI."""

from insignia.daemon.extras import SERVER_MODULES, require_extra
from insignia.daemon.grpc_core_logging import quiet_grpc_core

require_extra("server", SERVER_MODULES)

# Before any server module imports grpc: see insignia.daemon.grpc_core_logging.
quiet_grpc_core()
