"""Compression trade-off explorer: measured accuracy, size and latency of compressed models."""

__version__ = "0.1.0"
SCHEMA_VERSION = 4
