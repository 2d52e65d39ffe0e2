"""Heads from outside: scans, portraits and calibrated views on their way to a W+ latent, and glb heads out.

``scans`` (read and normalise a scan or portrait), ``scan_views`` (render a scan from the generator's cameras),
``invert`` (optimise W+ to match those views), ``gltf`` (glb writer/reader with vertex colours) and
``provenance`` (what made each output: sources, models, settings, consent).
"""
