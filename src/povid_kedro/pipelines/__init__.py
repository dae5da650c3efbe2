"""Kedro pipelines, one folder each; the folder name is the registry key."""
