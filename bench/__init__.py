"""Benchmarks of the archiver against the emulator on loopback: ``python -m bench --help``."""
