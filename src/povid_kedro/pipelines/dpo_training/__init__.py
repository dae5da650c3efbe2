"""POVID's two DPO stages with LoRA; the stage-2 model goes to the MLflow registry."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
