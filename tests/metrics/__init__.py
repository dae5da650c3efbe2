"""Tests of the hallucination metrics (CHAIR, POPE, MMHal-Bench)."""
