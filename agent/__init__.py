"""The agent daemon and its CLI."""

from insignia.daemon.extras import AGENT_MODULES, require_extra
from insignia.daemon.grpc_core_logging import quiet_grpc_core

require_extra("agent", AGENT_MODULES)

# Before any agent module imports grpc: see insignia.daemon.grpc_core_logging.
quiet_grpc_core()
