"""Sentinel: a crash-safe training daemon for fraud-detection models."""

__version__ = "0.1.0"
