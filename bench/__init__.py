"""Benchmarks: edged against its baselines, side by side in one run (the edged.bench package)."""
