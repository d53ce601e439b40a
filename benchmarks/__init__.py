"""Benchmarks, run side by side with the anchors: `python -m benchmarks`."""
