"""Benchmarks of leek against its peers (`make bench`, see docs/benchmarks.md)."""
