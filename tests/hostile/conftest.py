"""Fixtures of the hostile-input suite (defined in harness.py, which the tests import for the helpers)."""

from tests.hostile.harness import corpus, default_limits  # noqa: F401
