"""Benchmarks: edged against its baselines, side by side in one run (`edged bench`)."""
