"""Test helpers that ship with the package (a real-kernel driver), used by tests and benchmarks."""
