"""Shared by tests/interop and tests/observability, which import the harness in
tests/support as `support` (tests/pytest.ini puts tests/ on sys.path)."""

import pytest

# The helpers assert on the tests' behalf: rewrite their asserts as in a test module, so
# failures show the same detail as before they moved out of the test modules.
pytest.register_assert_rewrite("support")
