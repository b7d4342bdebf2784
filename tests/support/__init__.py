"""Test harness shared by tests/interop and tests/observability."""
