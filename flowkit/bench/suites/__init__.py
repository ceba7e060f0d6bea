"""The built-in ``flowkit bench`` suites (TOML files; package data, found by name)."""
