"""What the user runs: the command line, the one-head pipeline, the scan batch and the demo.

``cli`` (``python -m engine <command>``; one module per command in ``commands/``), ``pipeline`` (one head end
to end: the Blender button and ``engine head``), ``batch`` (a folder of scans → stylized glb heads), ``demo``
(the main job on the embedded pack) and ``report_html`` (the demo's HTML page).
"""
