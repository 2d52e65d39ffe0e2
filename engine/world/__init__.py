"""Procedural head world: identities, a signed distance field of the head, styled renders and mesh scans.

It gives the project training data that needs no downloads: sample identities, render them through the
generator's cameras in any registered style, or export them as scanner-like meshes::

    import torch
    from engine.generator.camera import CameraConfig, cameras_at
    from engine.world import render_heads, sample_identities

    ids = sample_identities(4, torch.Generator().manual_seed(0))
    cams = cameras_at(torch.linspace(-1.0, 1.0, 4), 0.0, CameraConfig(pivot=(0.0, 0.0, 0.0))).c
    out = render_heads(ids, cams, 64, style="statue")  # image (4, 3, 64, 64) in [-1, 1], depth, mask

Heads are centred on the world origin, so they are framed in every view by cameras that look at the
origin (the pivot PanoHead's own sampling scripts and the stylization code use); with the visualiser pivot
(0, 0, 0.2) front views are identical and side views are shifted sideways by 0.2.
"""

from .identity import (
    IDENTITY_DIM,
    IDENTITY_NAMES,
    IDENTITY_SPECS,
    IdentityParams,
    ParamSpec,
    from_physical,
    mirror_identity,
    neutral_identities,
    sample_identities,
    to_physical,
)
from .render import BACKGROUNDS, TraceConfig, make_background, render_heads, sphere_trace
from .scan import ScanExport, ScanResult, export_scan, head_mesh
from .sdf import HEAD_BOUNDS, HEAD_ORIGIN, WORLD_UNITS_PER_CM, HeadGeometry, Material, head_sdf
from .styles import STYLES, Lighting, Style, get_style

__all__ = [
    "BACKGROUNDS", "HEAD_BOUNDS", "HEAD_ORIGIN", "IDENTITY_DIM", "IDENTITY_NAMES", "IDENTITY_SPECS", "STYLES",
    "WORLD_UNITS_PER_CM", "HeadGeometry", "IdentityParams", "Lighting", "Material", "ParamSpec", "ScanExport",
    "ScanResult", "Style", "TraceConfig", "export_scan", "from_physical", "get_style", "head_mesh", "head_sdf",
    "make_background", "mirror_identity", "neutral_identities", "render_heads", "sample_identities", "sphere_trace",
    "to_physical",
]
