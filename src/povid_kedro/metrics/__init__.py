"""Hallucination metrics: CHAIR, POPE and MMHal-Bench (library code, no Kedro)."""
