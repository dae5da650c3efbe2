"""Tests of the hallucination injectors and their datasets."""
