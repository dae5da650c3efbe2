"""Score models for hallucination: CHAIR, POPE, MMHal-Bench; report and MLflow metrics."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
