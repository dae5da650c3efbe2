"""Tests of povid_kedro."""
