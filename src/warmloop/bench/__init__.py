"""Benchmarks of agent loops: workloads, a runner per protocol, reports (`warmloop bench`)."""
