"""Dispreferred answers y_h-: ground truth rewritten with hallucinations."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
