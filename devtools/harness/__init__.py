"""Driving the real server, agent and workloads as processes: what the integration tests and
the benchmarks share (neither imports the other)."""
