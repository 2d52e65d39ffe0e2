"""Calibrated views of a normalised scan: a vectorised pure-torch triangle rasteriser.

Inversion needs images of the scan from cameras whose poses it knows exactly, taken the way the generator's
own renderer looks at the world. So the cameras here *are* the generator's: 25-vectors from
:func:`engine.generator.camera.cameras_at` (radius, FOV, pivot of :class:`CameraConfig`), and pixel
``(row, col)`` samples the point where the ray of :func:`engine.generator.renderer.pixel_rays` for that
pixel — through the pixel *centre* ``((col + 0.5)/R, (row + 0.5)/R)`` in normalised image coordinates —
meets the mesh. ``depth`` is the distance along that ray, the quantity the generator reports as
``image_depth``.

How it rasterises without a Python loop over triangles or pixels: every triangle is projected, the pixel
centres inside its screen bounding box are enumerated as (triangle, pixel) candidate pairs with
``repeat_interleave``, edge functions give barycentrics (perspective-corrected through 1/z), and the nearest
candidate per pixel wins through ``scatter_reduce(amin)`` on depth. Triangles are processed in chunks that
bound the number of candidates, so memory stays flat for dense scans. Colours are the scan's vertex colours
(sRGB; times the base-colour texture where the scan has one, :mod:`engine.heads.texture`) lit like the procedural world's photographs — the key/fill/rim lights of
:class:`engine.world.styles.Lighting` with a wrapped Lambert and hemisphere ambient, fixed to the head (placed
by the front camera) as the v2 pack generator was trained, or turning with each camera (``lights``) —
because the generator learned lit heads, not albedo. ``supersample`` renders at k·R and box-filters, which anti-aliases silhouettes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError, InputError
from ..generator.camera import check_camera_vector, split_camera_vector
from ..mesh import Mesh, vertex_normals
from .texture import TextureSampler, linear_to_srgb, srgb_to_linear

BACKGROUND_COLOURS = {"white": (1.0, 1.0, 1.0), "black": (0.0, 0.0, 0.0), "grey": (0.5, 0.5, 0.5)}


@dataclass(frozen=True)
class ScanViewConfig:
    """How scan views are rendered.

    ``lighting``: 0 renders the bare vertex colours, 1 the world's studio lighting (blend in between).
    ``lights``: ``"head"`` fixes the studio lights to the head (where a front camera would put them), as the
    embedded generator v2 was trained (a view-independent field can only reproduce lights that do not move
    with the camera); ``"camera"`` moves them with each view's camera (the v1 generator's training lights).
    ``max_candidates`` bounds the (triangle, pixel) pairs held in memory at once.
    """

    resolution: int = 128
    supersample: int = 2
    background: str = "white"
    lighting: float = 1.0
    lights: str = "head"
    wrap: float = 0.35
    near: float = 1e-3
    max_candidates: int = 2_000_000

    def validate(self) -> "ScanViewConfig":
        if self.resolution < 4:
            raise ConfigError(f"scan view resolution must be ≥ 4, got {self.resolution}")
        if self.supersample < 1:
            raise ConfigError(f"scan view supersample must be ≥ 1, got {self.supersample}")
        if self.background not in BACKGROUND_COLOURS:
            raise ConfigError(f"scan view background must be one of {sorted(BACKGROUND_COLOURS)}, got {self.background!r}")
        if not 0.0 <= self.lighting <= 1.0:
            raise ConfigError(f"scan view lighting must be in [0, 1], got {self.lighting}")
        if self.lights not in ("head", "camera"):
            raise ConfigError(f"scan view lights must be 'head' or 'camera', got {self.lights!r}")
        if self.max_candidates < 1024:
            raise ConfigError(f"scan view max_candidates must be ≥ 1024, got {self.max_candidates}")
        return self


@dataclass
class Raster:
    """Per-pixel rasterisation of one camera: which triangle is seen and where inside it."""

    triangle: Tensor  # (R²,) int64, −1 where nothing is hit
    bary: Tensor  # (R², 3) perspective-correct barycentric weights
    depth: Tensor  # (R²,) camera-z of the hit (inf where nothing is hit)


def project(vertices: Tensor, cam2world: Tensor, intrinsics: Tensor, resolution: int) -> tuple[Tensor, Tensor]:
    """Pixel coordinates (V, 2) as (col, row) with pixel centres at integers, and camera z (V,).

    Inverse of ``pixel_rays``: a ray through normalised (u, v) = ((col + 0.5)/R, (row + 0.5)/R).
    """
    rotation, origin = cam2world[:3, :3], cam2world[:3, 3]
    cam = (vertices - origin) @ rotation  # rows: R^T (X − t)
    z = cam[:, 2]
    safe = torch.where(z.abs() < 1e-12, torch.full_like(z, 1e-12), z)
    x, y = cam[:, 0] / safe, cam[:, 1] / safe
    fx, fy, cx, cy, skew = intrinsics[0, 0], intrinsics[1, 1], intrinsics[0, 2], intrinsics[1, 2], intrinsics[0, 1]
    u = fx * x + skew * y + cx
    v = fy * y + cy
    return torch.stack((u * resolution - 0.5, v * resolution - 0.5), dim=-1), z


def rasterize(screen: Tensor, z: Tensor, faces: Tensor, resolution: int, config: ScanViewConfig) -> Raster:
    """Z-buffered coverage of ``faces`` given projected vertices (see module docstring for the method)."""
    device = screen.device
    n_pix = resolution * resolution
    best_depth = torch.full((n_pix,), float("inf"), device=device, dtype=screen.dtype)
    best_tri = torch.full((n_pix,), -1, device=device, dtype=torch.long)
    best_bary = torch.zeros(n_pix, 3, device=device, dtype=screen.dtype)

    tri_xy = screen[faces]  # (F, 3, 2)
    tri_z = z[faces]  # (F, 3)
    in_front = (tri_z > config.near).all(dim=1)
    lo = tri_xy.amin(dim=1).ceil().clamp(0, resolution - 1)
    hi = tri_xy.amax(dim=1).floor().clamp(0, resolution - 1)
    raw_lo, raw_hi = tri_xy.amin(dim=1), tri_xy.amax(dim=1)
    on_screen = (raw_hi >= 0).all(dim=1) & (raw_lo <= resolution - 1).all(dim=1)
    width = (hi[:, 0] - lo[:, 0] + 1).clamp_min(0).long()
    height = (hi[:, 1] - lo[:, 1] + 1).clamp_min(0).long()
    counts = torch.where(in_front & on_screen, width * height, torch.zeros_like(width))
    candidates = torch.nonzero(counts > 0).squeeze(1)
    if candidates.numel() == 0:
        return Raster(best_tri, best_bary, best_depth)

    group = (counts[candidates].cumsum(0) - 1) // config.max_candidates
    _, sizes = torch.unique_consecutive(group, return_counts=True)
    bounds = [0] + sizes.cumsum(0).tolist()
    for start, end in zip(bounds[:-1], bounds[1:]):  # chunks of triangles, not a loop over triangles
        tris = candidates[start:end]
        per = counts[tris]
        tri = torch.repeat_interleave(tris, per)
        offsets = torch.arange(int(per.sum()), device=device) - torch.repeat_interleave(per.cumsum(0) - per, per)
        w = width[tri]
        px = lo[tri, 0] + (offsets % w).to(screen.dtype)
        py = lo[tri, 1] + (offsets // w).to(screen.dtype)
        a, b, c = tri_xy[tri, 0], tri_xy[tri, 1], tri_xy[tri, 2]
        area = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])
        w0 = (b[:, 0] - px) * (c[:, 1] - py) - (b[:, 1] - py) * (c[:, 0] - px)
        w1 = (c[:, 0] - px) * (a[:, 1] - py) - (c[:, 1] - py) * (a[:, 0] - px)
        w2 = (a[:, 0] - px) * (b[:, 1] - py) - (a[:, 1] - py) * (b[:, 0] - px)
        safe_area = torch.where(area.abs() < 1e-12, torch.ones_like(area), area)
        screen_bary = torch.stack((w0, w1, w2), dim=1) / safe_area[:, None]
        inside = (area.abs() >= 1e-12) & (screen_bary >= -1e-6).all(dim=1)
        if not bool(inside.any()):
            continue
        tri, screen_bary, px, py = tri[inside], screen_bary[inside], px[inside], py[inside]
        inv_z = 1.0 / tri_z[tri]
        z_inv = (screen_bary * inv_z).sum(dim=1)
        depth = 1.0 / z_inv
        bary = screen_bary * inv_z / z_inv[:, None]
        pixel = (py.long() * resolution + px.long())
        chunk_min = torch.full((n_pix,), float("inf"), device=device, dtype=depth.dtype)
        chunk_min = chunk_min.scatter_reduce(0, pixel, depth, reduce="amin")
        win = depth <= chunk_min[pixel]
        # one winner per pixel among exact ties: the highest candidate index
        winner_index = torch.full((n_pix,), -1, device=device, dtype=torch.long)
        cand = torch.nonzero(win).squeeze(1)
        winner_index = winner_index.scatter_reduce(0, pixel[cand], cand, reduce="amax")
        hit_pixels = torch.nonzero(winner_index >= 0).squeeze(1)
        chosen = winner_index[hit_pixels]
        closer = depth[chosen] < best_depth[hit_pixels]
        hit_pixels, chosen = hit_pixels[closer], chosen[closer]
        best_depth[hit_pixels] = depth[chosen]
        best_tri[hit_pixels] = tri[chosen]
        best_bary[hit_pixels] = bary[chosen]
    return Raster(best_tri, best_bary, best_depth)


class MeshTensors:
    """The scan on a device, ready for repeated rendering (vertices, faces, linear colours, normals)."""

    def __init__(self, mesh: Mesh, device: torch.device | str = "cpu"):
        mesh.check("scan")
        if mesh.num_faces == 0:
            raise InputError("scan has no triangles to render")
        normals = mesh.vertex_normals if mesh.vertex_normals is not None else vertex_normals(mesh.vertices, mesh.faces)
        colours = mesh.vertex_colors if mesh.vertex_colors is not None else np.full(mesh.vertices.shape, 200, np.uint8)
        self.vertices = torch.from_numpy(mesh.vertices.astype(np.float32)).to(device)
        self.faces = torch.from_numpy(mesh.faces.astype(np.int64)).to(device)
        self.normals = torch.from_numpy(np.asarray(normals, dtype=np.float32)).to(device)
        self.albedo = srgb_to_linear(torch.from_numpy(colours.astype(np.float32) / 255.0).to(device))
        self.texture = TextureSampler(mesh.texture, device) if mesh.texture is not None else None
        # a textured face shows its vertex colour × its image; without vertex colours, the image alone
        self.textured_base = self.albedo if mesh.vertex_colors is not None else torch.ones_like(self.albedo)

    def albedo_at(self, triangle: Tensor, bary: Tensor) -> Tensor:
        """(M, 3) linear albedo at barycentric ``bary`` (M, 3) of triangles ``triangle`` (M,)."""
        corners = self.faces[triangle]
        weights = bary.unsqueeze(-1)
        albedo = (self.albedo[corners] * weights).sum(1)
        if self.texture is None:
            return albedo
        image, textured = self.texture.sample(triangle, bary)
        return torch.where(textured[:, None], (self.textured_base[corners] * weights).sum(1) * image, albedo)


def _shade(albedo: Tensor, normal: Tensor, view_dir: Tensor, cam_rotation: Tensor, config: ScanViewConfig) -> Tensor:
    """Linear RGB (M, 3) under the world's camera-fixed studio lights (see module docstring)."""
    from ..world.styles import Lighting

    lighting = Lighting()
    normal = F.normalize(normal, dim=-1)
    normal = torch.where(((normal * view_dir).sum(-1, keepdim=True) > 0), -normal, normal)  # face the camera
    lights = torch.tensor([lighting.key, lighting.fill, lighting.rim], dtype=normal.dtype, device=normal.device) @ cam_rotation.T
    lambert = ((normal @ lights.T + config.wrap) / (1 + config.wrap)).clamp_min(0)
    intensity = torch.tensor(lighting.intensities, dtype=normal.dtype, device=normal.device)
    up = 0.5 + 0.5 * normal[:, 1]
    ambient = lighting.ground + (lighting.sky - lighting.ground) * up
    lit = albedo * ((lambert * intensity).sum(-1) + ambient).unsqueeze(-1)
    return albedo + config.lighting * (lit - albedo)


def front_camera_rotation() -> Tensor:
    """(3, 3) camera-to-world rotation of the front camera (yaw 0, pitch 0, looking at the origin): where the
    head-fixed studio lights come from (the v2 training script's ``head_light_camera``)."""
    from ..generator.camera import CameraConfig, cameras_at

    return cameras_at(0.0, 0.0, CameraConfig(pivot=(0.0, 0.0, 0.0))).c[0, :16].reshape(4, 4)[:3, :3]


def render_scan_views(mesh: Mesh | MeshTensors, cameras: Tensor, config: ScanViewConfig = ScanViewConfig()) -> dict[str, Tensor]:
    """Render the scan from cameras (N, 25): ``image`` (N, 3, R, R) in [-1, 1], ``mask`` and ``depth`` (N, 1, R, R).

    ``depth`` is the ray distance where ``mask`` is 1 and 0 elsewhere (after supersampling: the mean over
    covered sub-pixels).
    """
    config = config.validate()
    check_camera_vector(cameras, "cameras")
    data = mesh if isinstance(mesh, MeshTensors) else MeshTensors(mesh, cameras.device)
    cameras = cameras.to(data.vertices)
    cam2world, intrinsics = split_camera_vector(cameras)
    k, res = config.supersample, config.resolution
    big = res * k
    background = torch.tensor(BACKGROUND_COLOURS[config.background], dtype=data.vertices.dtype, device=data.vertices.device)
    images, masks, depths = [], [], []
    centres = (torch.arange(big, dtype=data.vertices.dtype, device=data.vertices.device) + 0.5) / big
    head_light_rotation = front_camera_rotation()
    rows, cols = torch.meshgrid(centres, centres, indexing="ij")
    for i in range(cameras.shape[0]):  # a handful of views; everything inside is vectorised
        screen, z = project(data.vertices, cam2world[i], intrinsics[i], big)
        raster = rasterize(screen, z, data.faces, big, config)
        hit = raster.triangle >= 0
        corners = data.faces[raster.triangle.clamp_min(0)]  # (P, 3)
        weights = raster.bary.unsqueeze(-1)
        albedo = data.albedo_at(raster.triangle.clamp_min(0), raster.bary)
        normal = (data.normals[corners] * weights).sum(1)
        K = intrinsics[i]
        y_cam = (rows.reshape(-1) - K[1, 2]) / K[1, 1]
        x_cam = (cols.reshape(-1) - K[0, 2] - K[0, 1] * y_cam) / K[0, 0]
        ray_cam = torch.stack((x_cam, y_cam, torch.ones_like(x_cam)), dim=-1)
        ray_len = ray_cam.norm(dim=-1)
        view_dir = F.normalize(ray_cam @ cam2world[i, :3, :3].T, dim=-1)
        light_rotation = head_light_rotation.to(cam2world) if config.lights == "head" else cam2world[i, :3, :3]
        colour = linear_to_srgb(_shade(albedo, normal, view_dir, light_rotation, config))
        colour = torch.where(hit[:, None], colour, background)
        depth = torch.where(hit, raster.depth * ray_len, torch.zeros_like(ray_len))
        images.append(colour.reshape(big, big, 3).permute(2, 0, 1))
        masks.append(hit.to(colour.dtype).reshape(1, big, big))
        depths.append(depth.reshape(1, big, big))
    image, mask, depth = torch.stack(images), torch.stack(masks), torch.stack(depths)
    if k > 1:
        image = F.avg_pool2d(image, k)
        coverage = F.avg_pool2d(mask, k)
        depth = F.avg_pool2d(depth, k) / coverage.clamp_min(1e-6)
        mask = coverage
    return {"image": image * 2.0 - 1.0, "mask": mask, "depth": depth}
