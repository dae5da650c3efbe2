"""The ablation pipeline: POVID's components on and off, over seeds, on a validation split."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
