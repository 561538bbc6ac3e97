"""Benchmarks: `backprop bench` (bench/run.py) and the scripts beside it.  Speed is only
ever measured here, never asserted in tests."""
