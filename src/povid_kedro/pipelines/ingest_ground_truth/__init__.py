"""Read instruction data into the canonical ground-truth table."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
