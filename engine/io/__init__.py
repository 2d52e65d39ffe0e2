"""Files and messages every stage uses: atomic writes, JSON configs, images, JSON-line events, checkpoints.

The bottom stage of the engine: it imports no other engine package (only :mod:`engine.errors`).
"""
