"""Cameras: PanoHead conventions, the mirror operation, and the camera sets."""

from __future__ import annotations

import math

import pytest
import torch

from engine.errors import ConfigError, InputError
from engine.generator.camera import (
    CameraConfig,
    camera_vector,
    fov_to_intrinsics,
    look_at_cam2world,
    mirror_camera,
    named_views,
    orbit_cameras,
    sample_cameras,
    split_camera_vector,
)
from engine.generator.config import get_preset

F64 = torch.float64


def _yaw_pitch_grid() -> tuple[torch.Tensor, torch.Tensor]:
    yaw = torch.tensor([-3.0, -1.2, -0.4, 0.0, 0.3, 1.0, 2.5, math.pi], dtype=F64)
    pitch = torch.tensor([-0.5, 0.2, 0.0, 0.4, -0.2, 0.1, -1.0, 0.3], dtype=F64)
    return yaw, pitch


# --------------------------------------------------------------------------------------------------
def test_intrinsics_for_panohead_fov_hand_computed():
    # f = 1 / (tan(18.837 · 3.14159 / 360) · 1.414): tan(0.16439...) = 0.16589..., × 1.414 = 0.23455...
    intrinsics = fov_to_intrinsics(18.837, dtype=F64)
    expected = torch.tensor([[4.263390949, 0, 0.5], [0, 4.263390949, 0.5], [0, 0, 1]], dtype=F64)
    torch.testing.assert_close(intrinsics, expected, atol=1e-8, rtol=0)
    assert fov_to_intrinsics(18.837).dtype == torch.float32


def test_intrinsics_reject_bad_fov():
    with pytest.raises(ConfigError, match="fov_degrees"):
        fov_to_intrinsics(0.0)
    with pytest.raises(ConfigError, match="fov_degrees"):
        fov_to_intrinsics(200.0)


def test_front_camera_matches_panohead_convention():
    # yaw = pitch = 0, pivot at the origin: camera on +z at the radius, OpenCV axes x → +x, y → −y, z → −z.
    cam2world = look_at_cam2world(0.0, 0.0, radius=2.7, pivot=(0, 0, 0), dtype=F64)[0]
    expected = torch.tensor(
        [[1, 0, 0, 0], [0, -1, 0, 0], [0, 0, -1, 2.7], [0, 0, 0, 1]], dtype=F64
    )
    torch.testing.assert_close(cam2world, expected, atol=1e-12, rtol=0)


def test_positive_yaw_moves_camera_to_plus_x_and_negative_pitch_lifts_it():
    right = look_at_cam2world(0.5, 0.0, dtype=F64)[0, :3, 3]
    above = look_at_cam2world(0.0, -0.3, dtype=F64)[0, :3, 3]
    assert right[0] > 0 and right[2] > 0
    assert above[1] > 0
    # PanoHead's arccos warp: height is −radius · 2·pitch/π, not radius · sin(pitch).
    assert above[1].item() == pytest.approx(2.7 * 2 * 0.3 / math.pi, abs=1e-12)


def test_camera_is_at_radius_from_world_origin():
    # PanoHead places the camera on the sphere around the world origin and only turns it towards the pivot.
    yaw, pitch = _yaw_pitch_grid()
    for pivot in [(0.0, 0.0, 0.0), (0.0, 0.0, 0.2), (0.1, -0.05, 0.3)]:
        cam2world = look_at_cam2world(yaw, pitch, radius=2.7, pivot=pivot)
        torch.testing.assert_close(cam2world[:, :3, 3].double().norm(dim=-1), torch.full((8,), 2.7, dtype=F64))
    # With the pivot at the origin that is also the distance to the pivot.
    radii = torch.linspace(1.0, 4.0, 8, dtype=F64)
    cam2world = look_at_cam2world(yaw, pitch, radius=radii, pivot=(0, 0, 0))
    torch.testing.assert_close(cam2world[:, :3, 3].norm(dim=-1), radii)


def test_principal_ray_passes_through_pivot_and_frame_is_proper():
    yaw, pitch = _yaw_pitch_grid()
    pivot = torch.tensor([0.05, -0.1, 0.2], dtype=F64)
    cam2world = look_at_cam2world(yaw, pitch, pivot=pivot)
    rotation, origin = cam2world[:, :3, :3], cam2world[:, :3, 3]
    # The pixel at the principal point has camera-frame direction (0, 0, 1) → world direction R[:, 2].
    principal = rotation[:, :, 2]
    to_pivot = pivot - origin
    torch.testing.assert_close(torch.linalg.cross(principal, to_pivot, dim=-1), torch.zeros(8, 3, dtype=F64))
    assert (torch.einsum("ni,ni->n", principal, to_pivot) > 0).all()
    # Orthonormal, right-handed, no roll (image x axis horizontal), image y axis pointing down-ish.
    torch.testing.assert_close(rotation.transpose(1, 2) @ rotation, torch.eye(3, dtype=F64).expand(8, 3, 3))
    torch.testing.assert_close(torch.linalg.det(rotation), torch.ones(8, dtype=F64))
    torch.testing.assert_close(rotation[:, 1, 0], torch.zeros(8, dtype=F64), atol=1e-12, rtol=0)
    assert (rotation[:, 1, 1] < 0).all()
    torch.testing.assert_close(cam2world[:, 3], torch.tensor([0, 0, 0, 1], dtype=F64).expand(8, 4))


def test_camera_vector_round_trip_and_layout():
    cam2world = look_at_cam2world(torch.tensor([0.1, -0.7]), torch.tensor([0.0, 0.2]))
    intrinsics = fov_to_intrinsics(18.837)
    c = camera_vector(cam2world, intrinsics)
    assert c.shape == (2, 25) and c.dtype == torch.float32
    assert torch.equal(c[:, 3], cam2world[:, 0, 3]) and torch.equal(c[:, 16], intrinsics[0, 0].expand(2))
    back_c2w, back_k = split_camera_vector(c)
    assert torch.equal(back_c2w, cam2world) and torch.equal(back_k, intrinsics.expand(2, 3, 3))
    with pytest.raises(InputError, match=r"\(N, 25\)"):
        split_camera_vector(torch.zeros(2, 24))
    with pytest.raises(InputError, match="cam2world"):
        camera_vector(torch.zeros(2, 3, 4), intrinsics)


# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("pivot", [(0.0, 0.0, 0.0), (0.0, 0.0, 0.2), (0.0, -0.15, 0.35)])
def test_mirror_camera_equals_negated_yaw(pivot):
    yaw, pitch = _yaw_pitch_grid()
    config = CameraConfig(pivot=pivot)
    intrinsics = fov_to_intrinsics(config.fov_degrees, dtype=F64)
    c = camera_vector(look_at_cam2world(yaw, pitch, pivot=pivot), intrinsics)
    c_neg = camera_vector(look_at_cam2world(-yaw, pitch, pivot=pivot), intrinsics)
    torch.testing.assert_close(mirror_camera(c), c_neg, atol=1e-12, rtol=0)
    torch.testing.assert_close(mirror_camera(mirror_camera(c)), c, atol=0, rtol=0)
    assert not torch.allclose(mirror_camera(c)[yaw != 0], c[yaw != 0])  # the test has something to check


def test_mirror_camera_touches_exactly_the_documented_entries():
    c = torch.arange(1.0, 26.0).unsqueeze(0)
    mirrored = mirror_camera(c)
    flipped = (mirrored != c).nonzero()[:, 1].tolist()
    assert flipped == [1, 2, 3, 4, 8]
    assert torch.equal(mirrored[0, flipped], -c[0, flipped])


def test_mirror_is_a_reflection_of_the_camera_centre_and_axes():
    # Independent of the look-at code: mirrored centre is (−x, y, z), mirrored rotation is S·R·S.
    cam2world = look_at_cam2world(0.7, -0.2, pivot=(0.0, 0.1, 0.2), dtype=F64)
    c = camera_vector(cam2world, fov_to_intrinsics(18.837, dtype=F64))
    cam2world, _ = split_camera_vector(c)
    reflect = torch.diag(torch.tensor([-1.0, 1.0, 1.0], dtype=F64))
    mirrored, _ = split_camera_vector(mirror_camera(c))
    torch.testing.assert_close(mirrored[0, :3, 3], reflect @ cam2world[0, :3, 3])
    torch.testing.assert_close(mirrored[0, :3, :3], reflect @ cam2world[0, :3, :3] @ reflect)


# --------------------------------------------------------------------------------------------------
def test_orbit_covers_360_degrees_evenly():
    n = 12
    orbit = orbit_cameras(n, pitch=0.1, config=CameraConfig(pivot=(0, 0, 0)), dtype=F64)
    assert orbit.c.shape == (n, 25)
    torch.testing.assert_close(orbit.yaw, torch.arange(n, dtype=F64) * 2 * math.pi / n)
    centres = split_camera_vector(orbit.c)[0][:, :3, 3]
    azimuth = torch.atan2(centres[:, 0], centres[:, 2])  # 0 at the front (+z), growing towards +x
    steps = torch.remainder(azimuth.roll(-1) - azimuth, 2 * math.pi)
    torch.testing.assert_close(steps, torch.full((n,), 2 * math.pi / n, dtype=F64))
    torch.testing.assert_close(centres.mean(dim=0)[[0, 2]], torch.zeros(2, dtype=F64), atol=1e-12, rtol=0)
    torch.testing.assert_close(centres[:, 1], centres[0, 1].expand(n))  # one pitch: one height
    torch.testing.assert_close(centres[0], torch.tensor([0, centres[0, 1].item(), centres[0, 2].item()], dtype=F64))
    assert centres[0, 2] > 0


def test_named_views():
    views = named_views(dtype=F64)
    assert views.names == ("front", "yaw+45", "yaw-45", "yaw+90", "yaw-90", "back")
    torch.testing.assert_close(views.yaw, torch.deg2rad(torch.tensor([0.0, 45, -45, 90, -90, 180], dtype=F64)))
    centres = split_camera_vector(views.c)[0][:, :3, 3]
    torch.testing.assert_close(centres[0], torch.tensor([0, 0, 2.7], dtype=F64), atol=1e-12, rtol=0)
    torch.testing.assert_close(centres[3], torch.tensor([2.7, 0, 0], dtype=F64), atol=1e-12, rtol=0)
    torch.testing.assert_close(centres[5], torch.tensor([0, 0, -2.7], dtype=F64), atol=1e-12, rtol=0)
    # ±45° and ±90° are mirror pairs.
    torch.testing.assert_close(mirror_camera(views.c[[1, 3]]), views.c[[2, 4]], atol=1e-12, rtol=0)


def test_sample_cameras_uniform_in_range_and_seeded():
    yaw_range, pitch_range = (-1.0, 0.5), (-0.3, 0.2)
    first = sample_cameras(4000, yaw_range, pitch_range, generator=torch.Generator().manual_seed(3))
    again = sample_cameras(4000, yaw_range, pitch_range, generator=torch.Generator().manual_seed(3))
    other = sample_cameras(4000, yaw_range, pitch_range, generator=torch.Generator().manual_seed(4))
    assert torch.equal(first.c, again.c) and not torch.equal(first.c, other.c)
    assert first.yaw.min() >= -1.0 and first.yaw.max() <= 0.5
    assert first.pitch.min() >= -0.3 and first.pitch.max() <= 0.2
    # Uniform: mean and variance of U[a, b] are (a+b)/2 and (b−a)²/12 (tolerances ≈ 5 standard errors).
    assert first.yaw.mean().item() == pytest.approx(-0.25, abs=0.035)
    assert first.yaw.var().item() == pytest.approx(1.5**2 / 12, rel=0.08)
    assert first.pitch.mean().item() == pytest.approx(-0.05, abs=0.012)
    # The vectors are the cameras of the returned angles.
    expected = camera_vector(look_at_cam2world(first.yaw[:5], first.pitch[:5]), fov_to_intrinsics(18.837))
    torch.testing.assert_close(first.c[:5], expected)
    with pytest.raises(ConfigError, match="yaw_range"):
        sample_cameras(2, (1.0, 0.0))
    with pytest.raises(ConfigError, match="n must be"):
        sample_cameras(0)


def test_camera_config_from_rendering_preset():
    config = CameraConfig.from_rendering(get_preset("panohead").rendering)
    assert config == CameraConfig(radius=2.7, fov_degrees=18.837, pivot=(0.0, 0.0, 0.2))
