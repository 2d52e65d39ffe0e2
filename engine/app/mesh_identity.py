"""Head mode's identity for real meshes: lit source and stylized meshes, re-identified among real heads.

The rendering and the gallery's meshes are :mod:`engine.heads.lit_identity`; this module joins them to the
identity model (:mod:`engine.evaluate`) for :func:`engine.app.pipeline.run_head`: the lit views of both
meshes and the gallery's embeddings, cached by gallery file, cameras and
identity model.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..evaluate.metrics import IdentityGallery, embed_renders
from ..generator.triplane import TriPlaneGenerator
from ..heads.lit_identity import (GALLERY_PATH, LIT_VIEW_RESOLUTION, gallery_fingerprint, identity_cameras, lit_views,
                                  load_real_gallery, normalised_gallery)
from ..io.atomic import write_with
from ..mesh import Mesh


def gallery_embeddings(cameras: Tensor, backend: Any, cache_folder: Path | None, count: int,
                       path: str | Path = GALLERY_PATH) -> tuple[Tensor, list[str]]:
    """((K, V, D) identity embeddings of the first ``count`` gallery heads' lit views, their names), cached in
    ``cache_folder`` by gallery file, cameras and identity model."""
    from safetensors.torch import load_file, save_file

    heads = load_real_gallery(path)[:count]
    names = [h.name for h in heads]
    key = hashlib.sha256(json.dumps({"gallery": gallery_fingerprint(path), "names": names,
                                     "cameras": [round(float(x), 6) for x in cameras.flatten()],
                                     "resolution": LIT_VIEW_RESOLUTION,
                                     "backend": getattr(backend, "fingerprint", backend.name)},
                                    sort_keys=True).encode()).hexdigest()[:16]
    cached = None if cache_folder is None else Path(cache_folder) / "real_face_gallery" / f"{key}.safetensors"
    if cached is not None and cached.is_file():
        try:
            embeddings = load_file(str(cached))["embeddings"]
            if embeddings.shape[:2] == (len(heads), cameras.shape[0]):
                return embeddings, names
        except Exception:  # noqa: BLE001  (a damaged cache entry is recomputed and replaced, never fatal)
            pass
    renders = torch.stack([lit_views(mesh, cameras) for mesh in normalised_gallery(heads)])
    embeddings = embed_renders(renders, backend).contiguous()
    if cached is not None:
        write_with(cached, lambda tmp: save_file({"embeddings": embeddings}, str(tmp)))
    return embeddings, names


def mesh_identity(source: Mesh, stylized: Mesh, G: TriPlaneGenerator, backend: Any, cache_folder: Path | None,
                  gallery_heads: int) -> tuple[tuple[Tensor, Tensor], IdentityGallery, list[str]]:
    """Identity inputs judged on lit meshes: ((source, stylized) lit views (V, 3, R, R), the real-head gallery,
    the views' names)."""
    cameras, view_names = identity_cameras(G)
    lit_before, lit_after = lit_views(source, cameras), lit_views(stylized, cameras)
    embeddings, names = gallery_embeddings(cameras, backend, cache_folder, gallery_heads)
    label = (f"{len(names)} real heads (MakeHuman, CC0: {names[0]} … {names[-1]}), lit meshes; identity judged on "
             "the lit source and stylized meshes")
    return (lit_before, lit_after), IdentityGallery(before=embeddings, after=None, label=label), list(view_names)
