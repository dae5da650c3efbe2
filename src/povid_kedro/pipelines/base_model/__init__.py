"""The base model: a tiny LLaVA trained from scratch, or a pretrained model directory."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
