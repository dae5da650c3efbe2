"""Image-side dispreferences y_n-: diffusion-noised images and the model's answers under them."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
