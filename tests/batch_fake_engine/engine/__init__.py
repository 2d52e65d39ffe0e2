"""A stand-in for the engine package, used by tests/test_blender_batch.py (only ``batch`` is implemented)."""
