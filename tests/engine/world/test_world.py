"""Procedural head world: identities, SDF properties, sphere-traced renders, styles and mesh scans."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from engine.errors import ConfigError, InputError
from engine.generator.camera import CameraConfig, cameras_at, mirror_camera, split_camera_vector
from engine.generator.renderer import pixel_rays
from engine.mesh import read_ply
from engine.world import (
    HEAD_BOUNDS,
    IDENTITY_DIM,
    IDENTITY_NAMES,
    STYLES,
    IdentityParams,
    Lighting,
    Material,
    from_physical,
    head_sdf,
    mirror_identity,
    neutral_identities,
    render_heads,
    sample_identities,
    to_physical,
)
from engine.world.render import make_background, pack_rows
from engine.world.scan import ScanExport, export_scan
from engine.world.sdf import (
    BOUNDING_BOXES,
    BOUNDING_ELLIPSOID,
    HEAD_ORIGIN,
    WORLD_UNITS_PER_CM,
    local_to_world,
    sd_capsule,
    sd_ellipsoid,
    smooth_union,
    world_to_local,
)

CAMERAS = CameraConfig(pivot=(0.0, 0.0, 0.0))  # the pivot the official sampling scripts use
RES = 40


def ids(n: int, seed: int = 0) -> torch.Tensor:
    return sample_identities(n, torch.Generator().manual_seed(seed))


def symmetric(identity: torch.Tensor) -> torch.Tensor:
    return IdentityParams(identity).replace(asymmetry=0.0).values


def grid_points(lo: float, hi: float, n: int) -> torch.Tensor:
    axis = torch.linspace(lo, hi, n)
    return torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(1, -1, 3)


@pytest.fixture(scope="module")
def photo_and_styles() -> dict[str, dict[str, torch.Tensor]]:
    """Two identities from a front and a three-quarter view in every style (rendered once for the module)."""
    identity = ids(2, seed=3).repeat_interleave(2, dim=0)
    cams = cameras_at(torch.tensor([0.0, 0.6, 0.0, 0.6]), 0.05, CAMERAS).c
    return {name: render_heads(identity, cams, RES, name) for name in STYLES}


# --------------------------------------------------------------------------------------------------
# Identity
# --------------------------------------------------------------------------------------------------
def test_identity_sampling_is_seeded_normalised_and_round_trips():
    a, b, c = ids(64, 1), ids(64, 1), ids(64, 2)
    assert a.shape == (64, IDENTITY_DIM) and 20 <= IDENTITY_DIM <= 32 and len(set(IDENTITY_NAMES)) == IDENTITY_DIM
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= -1 and a.max() <= 1
    asym = IdentityParams(a).normalised("asymmetry")
    assert asym.abs().mean() < a[:, 0].abs().mean()  # concentrated near symmetric
    physical = to_physical(a)
    torch.testing.assert_close(from_physical(physical), a, atol=1e-5, rtol=0)
    spec = IdentityParams.specs[IdentityParams.index("nose_length")]
    torch.testing.assert_close(IdentityParams(a).nose_length, spec.low + (a[:, 8] + 1) / 2 * (spec.high - spec.low))
    assert torch.equal(mirror_identity(a)[:, :-1], a[:, :-1])
    assert torch.equal(mirror_identity(a)[:, -1], -a[:, -1])


def test_identity_errors_name_the_argument():
    with pytest.raises(InputError, match="identity"):
        head_sdf(torch.zeros(1, 5, 3), torch.zeros(1, IDENTITY_DIM + 1))
    with pytest.raises(InputError, match="points"):
        head_sdf(torch.zeros(2, 5, 3), torch.zeros(1, IDENTITY_DIM))
    with pytest.raises(ConfigError):
        sample_identities(0)
    with pytest.raises(ConfigError, match="unknown identity entry"):
        IdentityParams.index("tail_length")


# --------------------------------------------------------------------------------------------------
# Primitives and the field
# --------------------------------------------------------------------------------------------------
def test_primitives_against_exact_references():
    p = torch.randn(500, 3, dtype=torch.float64) * 3
    x, y, z = p.unbind(-1)
    # A sphere is an ellipsoid with equal radii: the approximation is exact there.
    torch.testing.assert_close(sd_ellipsoid(x, y, z, 2.0, 2.0, 2.0), p.norm(dim=-1) - 2.0)
    # Capsule against brute force distance to a finely sampled segment.
    a, b = torch.tensor([0.5, -1.0, 0.2], dtype=torch.float64), torch.tensor([-1.0, 2.0, 1.0], dtype=torch.float64)
    segment = a + torch.linspace(0, 1, 20001, dtype=torch.float64)[:, None] * (b - a)
    brute = torch.cdist(p, segment).amin(dim=1) - 0.7
    torch.testing.assert_close(sd_capsule(x, y, z, tuple(a), tuple(b), 0.7), brute, atol=1e-3, rtol=0)
    # Smooth union: exactly min when the two differ by more than k, and never above min.
    d1, d2 = torch.randn(1000, dtype=torch.float64), torch.randn(1000, dtype=torch.float64)
    blended = smooth_union(d1, d2, 0.5)
    far = (d1 - d2).abs() > 0.5
    assert torch.equal(blended[far], torch.minimum(d1, d2)[far])
    assert bool((blended <= torch.minimum(d1, d2)).all())
    assert float((torch.minimum(d1, d2) - blended).max()) <= 0.5 / 4 + 1e-12


def test_sdf_sign_inside_and_outside():
    identity = ids(4, 5)
    skull_centre = local_to_world(torch.tensor([0.0, 0.6, -0.6]))
    far_points = torch.tensor([[0.45, 0.45, 0.45], [-0.45, 0.3, -0.45], [0.0, 0.6, 0.0], [0.0, 0.0, 0.9]])
    points = torch.cat((skull_centre[None], far_points)).expand(4, -1, -1)
    sdf, material = head_sdf(points, identity)
    assert sdf.shape == (4, 5) and material.dtype == torch.int64
    assert bool((sdf[:, 0] < -0.05).all())  # several centimetres inside
    assert bool((sdf[:, 1:] > 0.03).all())
    # The distance bound never exceeds the true distance by much: a point 1 cm outside the skull top …
    top = local_to_world(torch.tensor([0.0, 40.0, -0.6]))
    d, _ = head_sdf(top.expand(4, 1, 3), identity)
    assert bool((d > 0).all()) and bool((d < float(top[1]) + 0.5).all())


def _inside_bounding_shapes(local: torch.Tensor) -> torch.Tensor:
    centre, radii = (torch.tensor(v) for v in BOUNDING_ELLIPSOID)
    inside = (((local - centre) / radii) ** 2).sum(-1) <= 1.0
    for lo, hi in BOUNDING_BOXES:
        inside |= ((local >= torch.tensor(lo)) & (local <= torch.tensor(hi))).all(-1)
    return inside


def test_heads_fit_in_the_box_and_the_tracer_bounds():
    """Extreme identities (corners of the normalised cube), also reshaped by every style, stay enclosed."""
    gen = torch.Generator().manual_seed(11)
    corners = torch.randint(0, 2, (6, IDENTITY_DIM), generator=gen).float() * 2 - 1
    extremes = torch.cat((corners, torch.ones(1, IDENTITY_DIM), -torch.ones(1, IDENTITY_DIM)))
    points = grid_points(-0.6, 0.6, 44)
    lo, hi = torch.tensor(HEAD_BOUNDS[0]), torch.tensor(HEAD_BOUNDS[1])
    reshapes = {style.reshape: style for style in STYLES.values()}.values()  # styles that share geometry once
    for style in reshapes:
        sdf, _ = head_sdf(points.expand(len(extremes), -1, -1), extremes, transform=style.reshape)
        inside = sdf < 0
        assert bool(inside.any(dim=1).all()), style.name
        occupied = points.expand_as(torch.empty(len(extremes), points.shape[1], 3))[inside]
        assert bool(((occupied >= lo) & (occupied <= hi)).all()), style.name
        assert float(occupied[:, [0, 2]].abs().max()) <= 0.4  # PanoHead's density crop keeps |x|, |z| ≤ 0.4
        assert bool(_inside_bounding_shapes(world_to_local(occupied)).all()), style.name


def test_symmetric_identity_gives_mirror_symmetric_field():
    identity = symmetric(ids(3, 7))
    p = torch.rand(3, 4000, 3) - 0.5
    mirrored = p * torch.tensor([-1.0, 1.0, 1.0])
    d, m = head_sdf(p, identity)
    d_m, m_m = head_sdf(mirrored, identity)
    assert torch.equal(d, d_m) and torch.equal(m, m_m)
    # With asymmetry, the mirror of a head is the head with the opposite asymmetry.
    asymmetric = IdentityParams(ids(3, 7)).replace(asymmetry=0.9).values
    d_a, _ = head_sdf(p, asymmetric)
    d_b, _ = head_sdf(mirrored, mirror_identity(asymmetric))
    torch.testing.assert_close(d_a, d_b, atol=1e-6, rtol=0)
    assert float((d_a - d).abs().max()) > 1e-3  # asymmetry does change the head


# --------------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------------
def test_render_output_shapes_ranges_and_background():
    identity = ids(2, 1)
    cams = cameras_at(torch.tensor([0.0, 2.0]), 0.0, CAMERAS).c
    out = render_heads(identity, cams, 24, "photo", background="white")
    assert out["image"].shape == (2, 3, 24, 24) and out["depth"].shape == (2, 1, 24, 24)
    assert out["mask"].shape == (2, 1, 24, 24) and out["material"].dtype == torch.int64
    assert out["image"].min() >= -1 and out["image"].max() <= 1
    assert out["mask"].min() >= 0 and out["mask"].max() <= 1
    empty = out["mask"] == 0
    assert bool((out["image"].permute(0, 2, 3, 1)[empty[:, 0]] == 1).all())  # white where nothing is hit
    assert bool((out["depth"][empty] == 3.3).all())
    covered = out["mask"] == 1
    assert 2.2 < float(out["depth"][covered].min()) and float(out["depth"][covered].max()) < 3.2
    assert 0.15 < float(out["mask"].mean()) < 0.6


def test_mirror_camera_render_is_the_horizontal_flip():
    identity = symmetric(ids(2, 4))
    cams = cameras_at(torch.tensor([0.5, -1.9]), torch.tensor([0.15, -0.2]), CAMERAS).c
    for name in [s.name for s in STYLES.values() if s.symmetric]:
        a = render_heads(identity, cams, 32, name)
        b = render_heads(identity, mirror_camera(cams), 32, name, lighting=Lighting().mirrored())
        for key in ("image", "depth", "mask"):
            torch.testing.assert_close(b[key], a[key].flip(-1), atol=2e-4, rtol=0, msg=f"{name}/{key}")
    # An asymmetric head seen in the mirror is the mirrored head.
    asymmetric = IdentityParams(ids(2, 4)).replace(asymmetry=1.0).values
    a = render_heads(asymmetric, cams, 32)
    b = render_heads(mirror_identity(asymmetric), mirror_camera(cams), 32, lighting=Lighting().mirrored())
    torch.testing.assert_close(b["image"], a["image"].flip(-1), atol=2e-4, rtol=0)
    c = render_heads(asymmetric, mirror_camera(cams), 32, lighting=Lighting().mirrored())
    assert float((c["image"] - a["image"].flip(-1)).abs().mean()) > 1e-3


def test_different_identities_render_differently():
    identity = ids(6, 9)
    cams = cameras_at(torch.zeros(6), 0.0, CAMERAS).c
    out = render_heads(identity, cams, RES)
    images, masks = out["image"], out["mask"]
    for i in range(6):
        for j in range(i + 1, 6):
            assert float((images[i] - images[j]).abs().mean()) > 0.02
            assert float((masks[i] - masks[j]).abs().mean()) > 0.005


def test_styles_keep_the_silhouette_and_change_the_colours(photo_and_styles):
    photo = photo_and_styles["photo"]
    mask = photo["mask"] > 0.5
    for name, out in photo_and_styles.items():
        if name == "photo":
            continue
        other = out["mask"] > 0.5
        iou = (mask & other).sum() / (mask | other).sum()
        if STYLES[name].keeps_silhouette:
            assert float(iou) > 0.99, name
        else:
            assert 0.6 < float(iou) < 0.99, name
        colour_gap = (out["image"] - photo["image"]).abs()[mask.expand_as(out["image"])].mean()
        assert float(colour_gap) > 0.08, name


def _mean_rgb(out, material=None):
    pick = out["mask"][:, 0] > 0.99
    if material is not None:
        pick = pick & torch.isin(out["material"][:, 0], torch.tensor([int(m) for m in material]))
    return ((out["image"] + 1) / 2).permute(0, 2, 3, 1)[pick].mean(0)


def test_each_style_has_its_signature(photo_and_styles):
    s = photo_and_styles
    sketch = (s["sketch"]["image"] + 1) / 2
    assert torch.equal(sketch[:, 0], sketch[:, 1]) and torch.equal(sketch[:, 1], sketch[:, 2])  # greyscale
    grey = sketch[:, 0][s["sketch"]["mask"][:, 0] > 0.99]
    assert float((grey > 0.8).float().mean()) > 0.35 and float((grey < 0.3).float().mean()) > 0.03  # paper, lines
    r, g, b = _mean_rgb(s["gold"])
    assert r > g > b + 0.15
    statue = _mean_rgb(s["statue"])
    assert float(statue.max() - statue.min()) < 0.06 and float(statue.mean()) > 0.5  # near-white, unsaturated
    r, g, b = _mean_rgb(s["zombie"], [Material.SKIN])
    assert g > r and g > b  # green-grey skin
    # Cartoon eyes are bigger: more eye pixels than in the photo.
    eye = torch.tensor([int(Material.SCLERA), int(Material.IRIS), int(Material.PUPIL)])
    eyes = {k: int(torch.isin(s[k]["material"], eye).sum()) for k in ("photo", "cartoon")}
    assert eyes["cartoon"] > 1.5 * eyes["photo"] > 0


def test_centre_pixel_depth_matches_a_ray_search():
    identity = ids(2, 6)
    res = 33  # odd: the centre pixel's ray is the optical axis
    cams = cameras_at(torch.zeros(2), 0.0, CAMERAS).c
    out = render_heads(identity, cams, res)
    cam2world, intrinsics = split_camera_vector(cams)
    origins, directions = pixel_rays(cam2world, intrinsics, res)
    centre = (res // 2) * res + res // 2
    o, d = origins[:, centre], directions[:, centre]
    torch.testing.assert_close(d, torch.tensor([[0.0, 0.0, -1.0]] * 2), atol=1e-6, rtol=0)
    t = torch.linspace(2.0, 3.3, 13001)
    sdf, _ = head_sdf(o[:, None] + t[None, :, None] * d[:, None], identity)
    first = (sdf < 0).float().argmax(dim=1)
    lo, hi = t[first - 1].clone(), t[first].clone()
    for _ in range(30):  # bisection on the bracket
        mid = (lo + hi) / 2
        s, _ = head_sdf((o + mid[:, None] * d)[:, None], identity)
        inside = s[:, 0] < 0
        hi, lo = torch.where(inside, mid, hi), torch.where(inside, lo, mid)
    torch.testing.assert_close(out["depth"][:, 0, res // 2, res // 2], lo, atol=5e-4, rtol=0)
    # The front surface at the optical axis is the face: about 2.7 − 0.17 from the camera.
    assert bool(((lo > 2.45) & (lo < 2.6)).all())


def test_renders_are_deterministic_and_backgrounds_follow_the_seed():
    identity = ids(2, 8)
    cams = cameras_at(torch.tensor([0.3, -0.3]), 0.0, CAMERAS).c
    a = render_heads(identity, cams, 24, "zombie", torch.Generator().manual_seed(1), background="gradient")
    b = render_heads(identity, cams, 24, "zombie", torch.Generator().manual_seed(1), background="gradient")
    c = render_heads(identity, cams, 24, "zombie", torch.Generator().manual_seed(2), background="gradient")
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert not torch.equal(a["image"], c["image"]) and torch.equal(a["mask"], c["mask"])
    plain = make_background("plain", 2, 4, torch.Generator().manual_seed(0))
    assert plain.shape == (2, 4, 4, 3) and torch.equal(plain[:, :1, :1].expand_as(plain), plain)
    gradient = make_background("gradient", 1, 8)
    assert float(gradient[0, 0, 0, 0]) > float(gradient[0, -1, 0, 0])  # lighter at the top


def test_back_view_shows_hair_and_front_view_shows_a_face():
    identity = ids(4, 12)
    cams = cameras_at(torch.tensor([0.0] * 4 + [math.pi] * 4), 0.0, CAMERAS).c
    out = render_heads(identity.repeat(2, 1), cams, RES)
    material, covered = out["material"][:, 0], out["mask"][:, 0] > 0.99
    top = torch.zeros_like(covered)
    top[:, : RES // 2] = True  # the head (above the neck) fills the upper half of the frame
    hair_fraction = ((material == int(Material.HAIR)) & covered & top).sum((1, 2)) / (covered & top).sum((1, 2))
    assert bool((hair_fraction[4:] > 0.6).all()), hair_fraction
    assert bool((hair_fraction[:4] < hair_fraction[4:] - 0.25).all()), hair_fraction
    for front in range(4):
        seen = set(material[front][covered[front]].tolist())
        assert {int(Material.SKIN), int(Material.IRIS), int(Material.LIPS), int(Material.HAIR)} <= seen


def test_render_errors():
    identity = ids(2)
    cams = cameras_at(torch.zeros(2), 0.0).c
    with pytest.raises(ConfigError, match="unknown style"):
        render_heads(identity, cams, 8, "watercolour")
    with pytest.raises(InputError, match="batch"):
        render_heads(identity, cams[:1], 8)
    with pytest.raises(InputError, match="cameras"):
        render_heads(identity, cams[:, :16], 8)
    with pytest.raises(ConfigError, match="background"):
        render_heads(identity, cams, 8, background="stars")


def test_pack_rows_matches_a_loop():
    mask = torch.rand(5, 17, generator=torch.Generator().manual_seed(0)) > 0.6
    index, valid = pack_rows(mask)
    assert valid.shape[1] == int(mask.sum(1).max())
    for row in range(5):
        expected = torch.nonzero(mask[row]).squeeze(1)
        assert torch.equal(index[row][valid[row]], expected)
        assert int(valid[row].sum()) == len(expected)


# --------------------------------------------------------------------------------------------------
# Scans
# --------------------------------------------------------------------------------------------------
def test_scan_is_watertight_on_the_surface_and_records_its_transform(tmp_path):
    identity = ids(1, 2)
    config = ScanExport(resolution=64, units="mm", up_axis="z", yaw_degrees=25.0, offset=(10.0, -5.0, 3.0))
    result = export_scan(identity[0], tmp_path / "head", config)
    assert [p.name for p in result.paths] == ["head.ply", "head.obj"] and result.sidecar.name == "head.json"
    mesh = read_ply(result.paths[0])
    assert mesh.vertex_colors is not None and mesh.num_faces > 1000
    edges = np.sort(np.concatenate([mesh.faces[:, [0, 1]], mesh.faces[:, [1, 2]], mesh.faces[:, [2, 0]]]), axis=1)
    _, counts = np.unique(edges, axis=0, return_counts=True)
    assert bool((counts == 2).all())  # closed, manifold edges

    sidecar = json.loads(result.sidecar.read_text())
    scan_to_world = np.asarray(sidecar["scan_to_world"])
    np.testing.assert_allclose(scan_to_world @ result.world_to_scan, np.eye(4), atol=1e-9)
    # Millimetres: the head is a few hundred mm tall; z-up with the base at z = 0 (+ offset).
    extent = mesh.vertices.max(0) - mesh.vertices.min(0)
    assert 300 < extent[2] < 600 and abs(mesh.vertices[:, 2].min() - 3.0) < 1e-3
    world = mesh.vertices.astype(np.float64) @ scan_to_world[:3, :3].T + scan_to_world[:3, 3]
    sdf, _ = head_sdf(torch.from_numpy(world).float()[None], identity)
    voxel = max(sidecar["voxel_size_world"])
    assert float(sdf.abs().max()) < voxel
    # Vertex colours are the photo albedo: the mesh carries skin and hair colours.
    assert len(np.unique(mesh.vertex_colors, axis=0)) > 3
    with pytest.raises(ConfigError, match="units"):
        ScanExport(units="inch").validate()
    with pytest.raises(ConfigError, match="one head"):
        export_scan(ids(2), tmp_path / "two", config)


def test_world_scale_constants_are_consistent():
    # 1 cm of head is WORLD_UNITS_PER_CM world units; the origin sits inside the box.
    assert torch.allclose(local_to_world(world_to_local(torch.tensor(HEAD_ORIGIN))), torch.tensor(HEAD_ORIGIN))
    assert float(world_to_local(torch.tensor([0.0, 0.0, 0.0]) + torch.tensor([WORLD_UNITS_PER_CM, 0, 0]))[0]) == (
        pytest.approx(1.0 - HEAD_ORIGIN[0] / WORLD_UNITS_PER_CM)
    )
    assert all(lo < o < hi for lo, o, hi in zip(HEAD_BOUNDS[0], HEAD_ORIGIN, HEAD_BOUNDS[1]))
    assert neutral_identities(3).shape == (3, IDENTITY_DIM)


def test_head_fixed_lights_give_a_surface_point_one_colour_from_every_side():
    """``light_cameras`` pins the studio lights to the head and ``gloss=0`` drops the view-dependent terms: a
    surface point seen from two sides then has (nearly) one colour, which a view-independent radiance field
    can reproduce; with the lights on each camera, or with highlights, the same point changes colour as the
    view turns. At the light camera itself nothing changes."""
    identity = symmetric(ids(1, 5)).expand(2, -1)
    cams = cameras_at(torch.tensor([-0.35, 0.35]), 0.0, CAMERAS).c
    front = cameras_at(0.0, 0.0, CAMERAS).c
    res = 64
    matte = Lighting(gloss=0.0)  # highlights and rim light depend on the view wherever the lights are
    pinned = render_heads(identity, cams, res, light_cameras=front, lighting=matte)
    moving = render_heads(identity, cams, res, lighting=matte)

    # Surface points of view 0, projected into view 1; keep those view 1 sees at the same depth.
    cam2world, intrinsics = split_camera_vector(cams)
    origins, directions = pixel_rays(cam2world, intrinsics, res)
    covered = pinned["mask"][0, 0].reshape(-1) > 0.99
    points = origins[0] + pinned["depth"][0, 0].reshape(-1, 1) * directions[0]
    world2cam = torch.linalg.inv(cam2world[1])
    local = points @ world2cam[:3, :3].T + world2cam[:3, 3]
    uv = (local[:, :2] / local[:, 2:]) @ intrinsics[1, :2, :2].T + intrinsics[1, :2, 2]
    pixel = (uv * res - 0.5).round().long()
    inside = covered & (pixel >= 0).all(1) & (pixel < res).all(1)
    index = pixel[:, 1].clamp(0, res - 1) * res + pixel[:, 0].clamp(0, res - 1)
    ray_depth = local.norm(dim=1)
    visible = inside & ((pinned["depth"][1, 0].reshape(-1)[index] - ray_depth).abs() < 0.01)
    assert int(visible.sum()) > 300

    def disagreement(out):
        a = out["image"][0].reshape(3, -1)[:, visible]
        b = out["image"][1].reshape(3, -1)[:, index[visible]]
        return float((a - b).abs().mean())

    assert disagreement(pinned) < 0.6 * disagreement(moving)  # measured 0.026 vs 0.057 at 64²
    assert disagreement(pinned) < 0.6 * disagreement(render_heads(identity, cams, res, light_cameras=front))
    torch.testing.assert_close(render_heads(identity[:1], front, 32, light_cameras=front)["image"],
                               render_heads(identity[:1], front, 32)["image"])
    with pytest.raises(InputError, match="light_cameras"):
        render_heads(identity, cams, 16, light_cameras=front.expand(3, -1))
