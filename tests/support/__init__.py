"""Test support: real loopback servers and helpers shared by test packages."""
