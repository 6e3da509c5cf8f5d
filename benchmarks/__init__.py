"""Benchmarks: they print tables and write JSON; they never assert."""
