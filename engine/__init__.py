"""Head Stylizer engine: 3D-aware head generation, stylization by likelihood distillation, meshes.

Plain Python (torch, diffusers, numpy, mcubes, pillow, safetensors). Never imports bpy, so that it can run
out of process from Blender, from the command line (``python -m engine``) and in tests.
"""

__version__ = "0.1.0"
