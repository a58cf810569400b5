"""A minimal SPIFFE Workload API client: what the agent CLI uses and the SDK builds on."""
