"""A stand-in for the engine package, used by tests/blender/test_batch.py (only ``batch`` is implemented)."""
