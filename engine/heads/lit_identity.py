"""Identity of an artist's mesh, judged on lit meshes: the source head, its stylized mesh and a gallery of real heads.

Head mode fits a field to the mesh's *bare* colours (the only colours a view-independent field can hold), so
its renders have no shading; a face detector made for photographs finds no face in a flat-coloured head (on
the two MakeHuman test heads: 0 of 5 views bare, 3 of 5 lit). What an artist gets back is a mesh, so identity is
measured on meshes, lit the same way: the normalised source mesh, the stylized head's marching-cubes mesh with
its vertex colours, and the real-head gallery (:data:`GALLERY_PATH`, ten MakeHuman heads, CC0, built by
``scripts/data/build_real_heads.py``), each rendered by the scan rasteriser with the studio lights fixed to the
head from :data:`LIT_VIEW_YAWS_DEG`.

The gallery is what makes the score mean something: the stylized head is re-identified among its own source
and the gallery's people (chance 1/(1 + K)). The embedded generator's procedural heads are no gallery for a
real head (dlib finds no face in them), and would make a real head easy to pick out.
"""

from __future__ import annotations

import hashlib
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import Tensor

from ..errors import InputError
from ..mesh import Mesh

GALLERY_PATH = Path(__file__).with_name("real_face_gallery.npz")
LIT_VIEW_RESOLUTION = 256  # dlib needs a face about 80 px wide; the views frame the head in ~60 % of it
# The views identity is judged from: the front and the inversion's held-out scoring views (±25°, ±65°). dlib's
# detector is made for faces within ~±40° of frontal: in the run's named views (front, ±45°, ±90°, back) it
# found a face only in the front view of a MakeHuman head, here in the front and ±25° views.
LIT_VIEW_YAWS_DEG = (0.0, 25.0, -25.0, 65.0, -65.0)
LIT_VIEW_PITCHES_DEG = (0.0, 5.0, 5.0, -5.0, -5.0)


@dataclass(frozen=True)
class GalleryHead:
    name: str
    mesh: Mesh  # as built: MakeHuman units (decimetres), y up, facing +z; normalised like any scan before use


def load_real_gallery(path: str | Path = GALLERY_PATH) -> list[GalleryHead]:
    """The real-head gallery's meshes, in the file's order (checked: a damaged file is named, never half-read)."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            names = [str(n) for n in data["names"]]
            heads = []
            for i, name in enumerate(names):
                mesh = Mesh(vertices=np.ascontiguousarray(data[f"vertices_{i}"], dtype=np.float32),
                            faces=np.ascontiguousarray(data[f"faces_{i}"], dtype=np.int32),
                            vertex_colors=np.ascontiguousarray(data[f"colours_{i}"], dtype=np.uint8))
                heads.append(GalleryHead(name, mesh.check(f"{path.name}: {name}")))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
        raise InputError(f"{path}: not a readable real-head gallery ({type(exc).__name__}: {exc})") from None
    if not heads:
        raise InputError(f"{path}: the real-head gallery is empty")
    return heads


def gallery_fingerprint(path: str | Path = GALLERY_PATH) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def identity_cameras(G) -> tuple[Tensor, tuple[str, ...]]:
    """(V, 25) cameras and names of the lit identity views: ``G``'s orbit radius and FOV, looking at the origin
    (where normalised scans are centred)."""
    from .invert import scan_cameras

    return scan_cameras(G, LIT_VIEW_YAWS_DEG, LIT_VIEW_PITCHES_DEG)


def lit_view_config(resolution: int = LIT_VIEW_RESOLUTION):
    """How identity views are rasterised: the studio lights fixed to the head, over white."""
    from .scan_views import ScanViewConfig

    return ScanViewConfig(resolution=resolution, lighting=1.0, lights="head")


def lit_views(mesh: Mesh, cameras: Tensor, resolution: int = LIT_VIEW_RESOLUTION) -> Tensor:
    """(V, 3, R, R) renders in [-1, 1] of ``mesh`` (generator frame) under the studio lights fixed to the head."""
    from .scan_views import render_scan_views

    return render_scan_views(mesh, cameras.float().cpu(), lit_view_config(resolution))["image"]


def normalised_gallery(heads: list[GalleryHead]) -> list[Mesh]:
    """The gallery heads placed in the generator's frame the way head mode places an artist's mesh."""
    from .scans import ScanNormalization, normalize_scan

    return [normalize_scan(h.mesh, ScanNormalization(), None, name=h.name).mesh for h in heads]
