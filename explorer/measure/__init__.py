"""Measurement: sizes from real files, latency, memory, MACs and per-layer tables."""
