"""Game-ready heads: life size, a UV atlas with a base-colour texture baked from the field, and levels of detail.

A marching-cubes head carries one colour per vertex (about one per mm² at 128³), which a game engine blurs
across each triangle and loses entirely once the mesh is simplified. Here every level of detail gets

1. its triangles: level 0 is the extracted mesh; lower levels come from quadric edge-collapse simplification
   (``fast-simplification``, a maintained binding of Fast Quadric Mesh Simplification) to a fraction of the
   triangles;
2. its own UV atlas from ``xatlas`` (the standard chart segmentation + packing library, as used by Blender's
   and Godot's lightmappers), with padding between charts;
3. its own base-colour texture, **sampled from the field's colour at the surface** under each texel — the same
   ``color_fn`` (and the same short inward averaging) the vertex colours use, so the texture holds the field's
   detail at texel resolution instead of an interpolation between vertices. Empty texels take the colour of
   the nearest filled one, so mip-maps and bilinear filtering never bleed the background into a chart.

Each level bakes its own atlas because simplification moves vertices across chart seams: a texture shared
between levels would tear. Lower levels get proportionally smaller textures.

**Life size**: the generator's canonical frame is the procedural world's, where a 23 cm crown-to-chin head
spans 0.368 units (:data:`engine.world.sdf.WORLD_UNITS_PER_CM`, chosen to frame heads like PanoHead's crops), so
one unit is 0.625 m. glTF is in metres; ``life_size`` scales by that (``metres_per_unit``), otherwise the
engine's units are kept.

Texel rasterisation is vectorised: every triangle's texel-centre candidates inside its UV bounding box are
enumerated at once (triangles grouped by bounding-box size, so a few large charts do not inflate the
candidate count of the many small ones) and barycentrics decide coverage.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, ClassVar

import numpy as np
import torch

from ..errors import ConfigError, EngineError, InputError
from ..io.configs import JsonConfig
from ..mesh import Mesh, MeshConfig, SurfaceTexture, remove_unused_vertices, sample_vertex_colors, vertex_normals
from ..world.sdf import WORLD_UNITS_PER_CM

PointFn = Callable[[torch.Tensor], torch.Tensor]

METRES_PER_WORLD_UNIT = 0.01 / WORLD_UNITS_PER_CM  # 0.625 m: a 23 cm crown-to-chin head is 0.368 units


@dataclass(frozen=True)
class GameAssetConfig(JsonConfig):
    """How a head becomes a game asset. ``lod_ratios``: fraction of level 0's triangles per level (1.0 first);
    level k's texture is ``texture_size`` halved k times, never below ``min_texture_size``."""

    config_label: ClassVar[str] = "game asset"

    texture_size: int = 1024
    min_texture_size: int = 256
    lod_ratios: tuple[float, ...] = (1.0, 0.3, 0.1)
    life_size: bool = True
    metres_per_unit: float = METRES_PER_WORLD_UNIT
    padding_texels: int = 4  # gap between charts in the atlas
    screen_coverage: tuple[float, ...] = (0.5, 0.2, 0.05)  # MSFT_lod hints: switch below these screen fractions

    def validate(self) -> "GameAssetConfig":
        if self.texture_size not in (256, 512, 1024, 2048, 4096):
            raise ConfigError(f"texture size must be 256, 512, 1024, 2048 or 4096, got {self.texture_size}")
        if not self.lod_ratios or self.lod_ratios[0] != 1.0 or any(
            not 0.0 < b < a for a, b in zip(self.lod_ratios, self.lod_ratios[1:])
        ):
            raise ConfigError(f"LOD ratios must start at 1.0 and decrease, staying above 0, got {self.lod_ratios}")
        if len(self.lod_ratios) > 8:
            raise ConfigError(f"at most 8 levels of detail, got {len(self.lod_ratios)}")
        if not self.metres_per_unit > 0:
            raise ConfigError(f"metres per unit must be > 0, got {self.metres_per_unit}")
        if not 0 <= self.padding_texels <= 32:
            raise ConfigError(f"atlas padding must be 0…32 texels, got {self.padding_texels}")
        if len(self.screen_coverage) < len(self.lod_ratios):
            raise ConfigError("give one screen-coverage value per level of detail")
        return self

    def texture_size_of(self, level: int) -> int:
        return max(self.min_texture_size, self.texture_size >> level)

    @property
    def scale(self) -> float:
        return self.metres_per_unit if self.life_size else 1.0


@dataclass
class GameLevel:
    """One level of detail: its mesh (``texture`` = one baked image), the (u, v) of each of its vertices
    (seam vertices are split, so one per vertex suffices), its share of level 0's triangles, texture size."""

    mesh: Mesh
    uv: np.ndarray  # (V, 2) float32, glTF convention
    ratio: float
    texture_size: int

    @property
    def image(self) -> np.ndarray:
        return self.mesh.texture.images[0]


@dataclass
class GameAsset:
    levels: list[GameLevel]
    scale: float  # metres per engine unit applied to the vertices (1.0: engine units kept)
    metadata: dict = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------
# Simplification and atlas
# --------------------------------------------------------------------------------------------------
def simplify(mesh: Mesh, ratio: float) -> tuple[np.ndarray, np.ndarray]:
    """(vertices, faces) with about ``ratio`` of the triangles, by quadric edge collapse."""
    if ratio >= 1.0:
        return mesh.vertices, mesh.faces
    import fast_simplification

    target = max(4, int(round(mesh.num_faces * ratio)))
    vertices, faces = fast_simplification.simplify(
        mesh.vertices.astype(np.float64), mesh.faces.astype(np.int32), target_count=target
    )
    vertices, faces, _ = remove_unused_vertices(np.asarray(vertices, np.float32), np.asarray(faces, np.int32))
    return vertices, faces


MAX_CHART_SHARE_INVERSE = 16  # a UV chart covers at most 1/16 of the mesh's surface (see uv_atlas)


def uv_atlas(vertices: np.ndarray, faces: np.ndarray, texture_size: int, padding: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """xatlas charts packed into a ``texture_size``² image → (source vertex of each new vertex, faces, uv).

    Vertices on a chart seam are split (one copy per chart); ``uv`` is in glTF's convention (u right, v down,
    0…1 over the whole image).
    """
    import xatlas

    atlas = xatlas.Atlas()
    atlas.add_mesh(np.ascontiguousarray(vertices, np.float32), np.ascontiguousarray(faces, np.uint32))
    charts = xatlas.ChartOptions()
    # No chart may cover more than 1/16 of the surface. Uncapped, xatlas grows large charts on a marching-cubes
    # head and then spends most of its time splitting them again: on a 34k-triangle head the cap gives about as
    # many charts (1136 against 1130) and the same use of the texture (0.84 against 0.85) in 5.7 s against
    # 9.6 s (bench/bench_game_asset.py). The area is the mesh's own, so the cap does not depend on its units.
    corners = np.asarray(vertices, np.float64)[np.asarray(faces, np.int64)]
    area = 0.5 * np.linalg.norm(np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0]), axis=1).sum()
    charts.max_chart_area = float(area / MAX_CHART_SHARE_INVERSE)
    pack = xatlas.PackOptions()
    pack.resolution = int(texture_size)
    pack.padding = int(padding)
    pack.bilinear = True
    pack.blockAlign = True
    atlas.generate(chart_options=charts, pack_options=pack)
    if atlas.atlas_count != 1:
        raise EngineError(f"UV atlas: xatlas made {atlas.atlas_count} atlases, expected one")
    vmap, new_faces, uv = atlas[0]
    # uv is normalised to the packed atlas (xatlas may pack slightly more or fewer texels than asked; the
    # image is then that atlas resampled to texture_size², keeping charts and padding in proportion).
    return np.asarray(vmap, np.int64), np.asarray(new_faces, np.int32), np.asarray(uv, np.float32)


# --------------------------------------------------------------------------------------------------
# Texel rasterisation
# --------------------------------------------------------------------------------------------------
@dataclass
class TexelCover:
    """Texels covered by the UV triangles: flat texel index (row·size + col), triangle, barycentrics."""

    texel: np.ndarray  # (N,) int64
    triangle: np.ndarray  # (N,) int64
    bary: np.ndarray  # (N, 3) float32


def rasterize_uv(corner_uv: np.ndarray, size: int, max_candidates: int = 4_000_000) -> TexelCover:
    """Which triangle covers each texel centre of a ``size``² image (first triangle wins on overlaps).

    ``corner_uv`` is (F, 3, 2) in 0…1 (u right, v down). Texel (row, col) has its centre at
    ((col + 0.5)/size, (row + 0.5)/size). Vectorised: candidates are the texel centres in each triangle's
    bounding box, generated for groups of triangles with similar box sizes.
    """
    pix = corner_uv.astype(np.float64) * size - 0.5  # texel-centre coordinates: centre of texel c is at c
    lo = np.clip(np.ceil(pix.min(axis=1) - 1e-9), 0, size - 1).astype(np.int64)  # (F, 2) col,row
    hi = np.clip(np.floor(pix.max(axis=1) + 1e-9), 0, size - 1).astype(np.int64)
    extent = np.maximum(hi - lo + 1, 0)  # (F, 2)
    a, b, c = pix[:, 0], pix[:, 1], pix[:, 2]
    area = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])
    usable = (np.abs(area) > 1e-12) & (extent > 0).all(axis=1)
    texels, triangles, barys = [], [], []
    # Group by bounding-box size (rounded up to a power of two per axis) to keep candidate arrays tight.
    bucket_w = np.power(2, np.ceil(np.log2(np.maximum(extent[:, 0], 1)))).astype(np.int64)
    bucket_h = np.power(2, np.ceil(np.log2(np.maximum(extent[:, 1], 1)))).astype(np.int64)
    keys = bucket_w * 65536 + bucket_h
    for key in np.unique(keys[usable]):
        w, h = int(key // 65536), int(key % 65536)
        members = np.flatnonzero(usable & (keys == key))
        per_chunk = max(1, max_candidates // (w * h))
        dx, dy = np.meshgrid(np.arange(w), np.arange(h), indexing="xy")
        for start in range(0, len(members), per_chunk):
            tri = members[start : start + per_chunk]
            cols = lo[tri, 0, None] + dx.reshape(1, -1)  # (T, w·h)
            rows = lo[tri, 1, None] + dy.reshape(1, -1)
            inside_box = (cols <= hi[tri, 0, None]) & (rows <= hi[tri, 1, None])
            px, py = cols.astype(np.float64), rows.astype(np.float64)
            ta, tb, tc = a[tri], b[tri], c[tri]
            inv = 1.0 / area[tri, None]
            w0 = ((tb[:, 0, None] - px) * (tc[:, 1, None] - py) - (tb[:, 1, None] - py) * (tc[:, 0, None] - px)) * inv
            w1 = ((tc[:, 0, None] - px) * (ta[:, 1, None] - py) - (tc[:, 1, None] - py) * (ta[:, 0, None] - px)) * inv
            w2 = 1.0 - w0 - w1
            eps = -1e-7
            hit = inside_box & (w0 >= eps) & (w1 >= eps) & (w2 >= eps)
            t_index, k_index = np.nonzero(hit)
            texels.append(rows[t_index, k_index] * size + cols[t_index, k_index])
            triangles.append(tri[t_index])
            barys.append(np.stack([w0[t_index, k_index], w1[t_index, k_index], w2[t_index, k_index]], axis=1))
    if not texels:
        return TexelCover(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 3), np.float32))
    texel = np.concatenate(texels)
    triangle = np.concatenate(triangles)
    bary = np.clip(np.concatenate(barys), 0.0, 1.0)
    bary /= bary.sum(axis=1, keepdims=True)
    # One triangle per texel: the lowest triangle index (deterministic whatever the bucket order).
    order = np.lexsort((triangle, texel))
    texel, triangle, bary = texel[order], triangle[order], bary[order]
    first = np.ones(len(texel), bool)
    first[1:] = texel[1:] != texel[:-1]
    return TexelCover(texel[first], triangle[first], bary[first].astype(np.float32))


def fill_empty_texels(image: np.ndarray, filled: np.ndarray) -> np.ndarray:
    """Give every texel outside the charts the colour of the nearest texel inside one (no background bleed)."""
    from scipy import ndimage

    if filled.all() or not filled.any():
        return image
    _, (rows, cols) = ndimage.distance_transform_edt(~filled, return_indices=True)
    return image[rows, cols]


def bake_texture(
    color_fn: PointFn,
    vertices: np.ndarray,
    faces: np.ndarray,
    corner_uv: np.ndarray,
    normals: np.ndarray,
    size: int,
    mesh_config: MeshConfig,
    device: torch.device | str = "cpu",
) -> tuple[np.ndarray, float]:
    """(size, size, 3) uint8 texture of the field's colour at the surface point under each texel, and the
    fraction of texels inside a chart. Colours come from :func:`sample_vertex_colors` at those points (the
    same inward averaging as the vertex colours)."""
    cover = rasterize_uv(corner_uv, size)
    if len(cover.texel) == 0:
        raise EngineError("texture bake: no texel is covered by the UV atlas")
    corners = vertices[faces[cover.triangle]]  # (N, 3, 3)
    points = np.einsum("nk,nkd->nd", cover.bary, corners).astype(np.float32)
    n = np.einsum("nk,nkd->nd", cover.bary, normals[faces[cover.triangle]])
    n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)
    colours = sample_vertex_colors(color_fn, points, mesh_config, n.astype(np.float32), device=device)
    image = np.zeros((size * size, 3), np.uint8)
    image[cover.texel] = colours
    filled = np.zeros(size * size, bool)
    filled[cover.texel] = True
    image = fill_empty_texels(image.reshape(size, size, 3), filled.reshape(size, size))
    return np.ascontiguousarray(image), float(filled.mean())


# --------------------------------------------------------------------------------------------------
# The asset
# --------------------------------------------------------------------------------------------------
def build_game_asset(
    mesh: Mesh,
    color_fn: PointFn,
    mesh_config: MeshConfig,
    config: GameAssetConfig = GameAssetConfig(),
    device: torch.device | str = "cpu",
) -> GameAsset:
    """Levels of detail of ``mesh`` (engine units in, metres out when ``config.life_size``), each with its own
    atlas and a texture baked from ``color_fn``. Vertex colours are kept on every level (sampled the same way)
    so viewers without texture support still show the head."""
    config.validate()
    mesh.check("head")
    if mesh.num_faces == 0:
        raise InputError("head: the mesh has no triangles to texture")
    levels = []
    meta_levels = []
    for level, ratio in enumerate(config.lod_ratios):
        vertices, faces = simplify(mesh, ratio)
        normals = vertex_normals(vertices, faces).astype(np.float32)
        size = config.texture_size_of(level)
        vmap, split_faces, uv = uv_atlas(vertices, faces, size, config.padding_texels)
        split_vertices = vertices[vmap]
        split_normals = normals[vmap]
        corner_uv = uv[split_faces]  # (F, 3, 2)
        image, coverage = bake_texture(color_fn, split_vertices, split_faces, corner_uv, split_normals, size,
                                       mesh_config, device)
        colours = sample_vertex_colors(color_fn, split_vertices, mesh_config, split_normals, device=device)
        lod_mesh = Mesh(
            vertices=(split_vertices * config.scale).astype(np.float32),
            faces=split_faces.astype(np.int32),
            vertex_colors=colours,
            vertex_normals=split_normals,
            texture=SurfaceTexture(corner_uv.astype(np.float32), np.zeros(len(split_faces), np.int32), [image]),
        ).check(f"head LOD{level}")
        levels.append(GameLevel(lod_mesh, uv, ratio, size))
        meta_levels.append({"level": level, "triangles": int(len(split_faces)), "vertices": int(len(split_vertices)),
                            "texture_size": size, "texture_coverage": round(coverage, 4)})
    return GameAsset(levels, config.scale, {"levels": meta_levels, "life_size": config.life_size,
                                            "metres_per_unit": config.scale})


def game_glb_bytes(asset: GameAsset, config: GameAssetConfig = GameAssetConfig(), extras: dict | None = None,
                   name: str = "head") -> bytes:
    """The asset as one ``.glb``: every level textured (PNG), levels linked by ``MSFT_lod``."""
    from ..io.images import png_bytes
    from .gltf import textured_lod_glb_bytes

    levels = [(lvl.mesh, lvl.uv, png_bytes(lvl.image)) for lvl in asset.levels]
    info = {**(extras or {}), "game_asset": asset.metadata}
    return textured_lod_glb_bytes(levels, list(config.screen_coverage), info, name=name)
