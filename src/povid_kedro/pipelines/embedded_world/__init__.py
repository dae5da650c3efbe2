"""Generate the embedded synthetic world into data/01_raw."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
