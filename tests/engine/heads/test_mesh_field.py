"""Head mode's field fit: libigl queries on a sphere with hand-known answers, a reproducible batch, and a fit
whose density, colours and extracted mesh match the sphere."""

from __future__ import annotations

import dataclasses
import math


import numpy as np
import pytest
import torch

from engine.errors import InputError
from engine.generator.loading import load_generator
from engine.generator.inference import head_mesh
from engine.heads.mesh_field import (
    DEFAULT_FIELD_STEPS,
    NEUTRAL_ALBEDO,
    MeshFieldConfig,
    MeshQuery,
    field_batch,
    fit_mesh_field,
)
from engine.mesh import Mesh, MeshConfig
from engine.pack import pack_paths

pytestmark = pytest.mark.usefixtures("single_thread")
from tests.engine.heads.shapes import BLUE, RADIUS, RED, uv_sphere


def test_signed_distance_sign_and_value_on_a_sphere():
    query = MeshQuery(uv_sphere())
    points = np.array([[0, 0, 0], [0.1, 0, 0], [0, 0.3, 0], [0.25, 0.25, 0.25]])
    sdf, _, closest = query.signed_distance(points)
    expected = np.linalg.norm(points, axis=1) - RADIUS
    np.testing.assert_allclose(sdf, expected, atol=0.004)  # the tessellation lies up to ~0.0035 inside
    assert sdf[0] < 0 and sdf[1] < 0 and sdf[2] > 0
    np.testing.assert_allclose(np.linalg.norm(closest, axis=1), RADIUS, atol=0.004)


def test_prebuilt_queries_agree_with_libigls_one_shot_functions():
    """The cached AABB gives libigl's exact point-to-mesh distance and closest points, and the cached winding-
    number hierarchy the sign igl.signed_distance(FAST_WINDING_NUMBER) gives (whose magnitudes are approximate
    away from the surface, so only its sign is compared)."""
    import igl

    sphere = uv_sphere()
    keep = ~(sphere.vertices[sphere.faces][:, :, 1] < -0.15).any(1)  # open, so the sign is a real test
    mesh = Mesh(sphere.vertices, sphere.faces[keep], sphere.vertex_colors)
    V, F = mesh.vertices.astype(np.float64), mesh.faces.astype(np.int64)
    points = np.random.default_rng(1).uniform(-0.4, 0.4, (2000, 3))
    ours, face, closest = MeshQuery(mesh).signed_distance(points)
    squared, _, exact_closest = igl.point_mesh_squared_distance(points, V, F)
    np.testing.assert_allclose(np.abs(ours), np.sqrt(squared), atol=1e-9)
    np.testing.assert_allclose(closest, exact_closest, atol=1e-9)
    theirs = igl.signed_distance(points, V, F, sign_type=igl.SIGNED_DISTANCE_TYPE_FAST_WINDING_NUMBER)[0]
    assert (np.sign(ours) == np.sign(theirs)).mean() > 0.999


def test_open_mesh_keeps_the_inside_inside():
    """A scan with an open neck: the generalised winding number still calls the centre inside."""
    sphere = uv_sphere()
    keep = ~(sphere.vertices[sphere.faces][:, :, 1] < -0.15).any(1)  # cut a hole around the bottom pole
    query = MeshQuery(Mesh(sphere.vertices, sphere.faces[keep], sphere.vertex_colors))
    sdf, _, _ = query.signed_distance(np.array([[0.0, 0.0, 0.0], [0.0, 0.1, 0.0], [0.0, 0.5, 0.0]]))
    assert sdf[0] < 0 and sdf[1] < 0 and sdf[2] > 0


def test_colours_and_surface_samples():
    query = MeshQuery(uv_sphere())
    rng = np.random.default_rng(0)
    points, normals, colours = query.sample_surface(4000, rng)
    np.testing.assert_allclose(np.linalg.norm(points, axis=1), RADIUS, atol=0.004)
    assert ((normals * points).sum(1) > 0).all()  # outward
    top, bottom = points[:, 1] > 0.03, points[:, 1] < -0.03  # beyond the band of triangles that mix the two
    np.testing.assert_allclose(colours[top], np.broadcast_to(np.array(RED) / 255, colours[top].shape), atol=1e-6)
    np.testing.assert_allclose(colours[bottom], np.broadcast_to(np.array(BLUE) / 255, colours[bottom].shape), atol=1e-6)
    assert 0.4 < top.mean() / (top.mean() + bottom.mean()) < 0.6  # area-weighted: half the area each side
    # a vertex's own position returns its colour exactly
    sdf, face, closest = query.signed_distance(query.vertices[:5])
    np.testing.assert_allclose(query.colour_at(closest, face), query.colours[:5], atol=1e-6)
    # no colours: the neutral albedo
    grey = MeshQuery(Mesh(uv_sphere().vertices, uv_sphere().faces))
    np.testing.assert_allclose(grey.sample_surface(10, rng)[2], np.broadcast_to(NEUTRAL_ALBEDO, (10, 3)), atol=1e-12)


def test_bad_meshes_are_refused_by_name():
    with pytest.raises(InputError, match="triangle mesh"):
        MeshQuery(Mesh(np.zeros((3, 3), np.float32), np.zeros((0, 3), np.int32)))
    with pytest.raises(InputError, match="zero area"):
        MeshQuery(Mesh(np.zeros((3, 3), np.float32), np.array([[0, 1, 2]], np.int32)))


def test_batches_come_from_the_seed_and_step():
    query, config = MeshQuery(uv_sphere()), MeshFieldConfig(density_points=64, colour_points=32)
    a, b, c = field_batch(query, config, 3, 0.5), field_batch(query, config, 3, 0.5), field_batch(query, config, 4, 0.5)
    assert torch.equal(a.points, b.points) and torch.equal(a.colour, b.colour) and not torch.equal(a.points, c.points)
    # the density targets put the iso level on the surface: inside above it, outside below
    radius = a.points[0].norm(dim=-1)
    assert (a.density[0][radius < RADIUS - 0.01] > 10).all() and (a.density[0][radius > RADIUS + 0.01] < 10).all()


def test_a_fit_is_reproducible_whatever_ran_before():
    """Same mesh, config and seed → the same field, even when torch's global random stream differs (the
    photometric step's ray jitter is drawn from the fit's own seed and step)."""
    G = load_generator(pack_paths().generator).generator.eval()
    config = MeshFieldConfig(steps=4, density_points=256, colour_points=128, photo_every=2, photo_views=2)
    torch.manual_seed(1)
    a = fit_mesh_field(uv_sphere(), G, config)
    torch.manual_seed(2)
    torch.rand(1000)
    b = fit_mesh_field(uv_sphere(), G, config)
    assert [r["photo"] for r in a.history if "photo" in r] == [r["photo"] for r in b.history if "photo" in r]
    assert torch.equal(a.planes, b.planes)
    assert a.sr_polish["steps"] == config.polish_steps() == 5 and a.sr_polish["last_mse"] == b.sr_polish["last_mse"]
    sr_a, sr_b = a.generator.superresolution.state_dict(), b.generator.superresolution.state_dict()
    assert all(torch.equal(v, sr_b[k]) for k, v in sr_a.items())
    # the weights from before the polish (where a stylization starts) are the fit's: those of the same fit
    # with the polish off, not the polished ones
    unpolished = fit_mesh_field(uv_sphere(), G, dataclasses.replace(config, sr_polish_steps=0))
    assert unpolished.fitted_superresolution == {}
    kept, fitted = a.fitted_superresolution, unpolished.generator.superresolution.state_dict()
    assert kept.keys() == fitted.keys() and all(torch.equal(kept[k], fitted[k]) for k in fitted)
    assert not all(torch.equal(kept[k], sr_a[k]) for k in sr_a)


def test_the_photometric_step_renders_with_the_configured_ray_samples(monkeypatch):
    """The fit's photometric renders use ``photo_ray_samples`` (the cheaper render the fit's time budget
    relies on) — and only those: what the fitted field is judged, polished and meshed with stays the generator's
    own."""
    from engine.generator.triplane import TriPlaneGenerator

    seen = []
    render = TriPlaneGenerator.render

    def spy(self, ws, c, options, planes=None):
        seen.append(options.ray_samples)
        return render(self, ws, c, options, planes=planes)

    monkeypatch.setattr(TriPlaneGenerator, "render", spy)
    G = load_generator(pack_paths().generator).generator.eval()
    config = MeshFieldConfig(steps=4, density_points=256, colour_points=128, photo_every=2, photo_views=2,
                             photo_ray_samples=(6, 5))
    field = fit_mesh_field(uv_sphere(), G, config)
    assert seen == [(6, 5), (6, 5), None]  # the two photometric steps, then the polish's one render
    assert field.generator.config.rendering.depth_resolution == G.config.rendering.depth_resolution
    for bad in ((3, 8), (8, -1), (8,)):
        with pytest.raises(Exception, match="photo_ray_samples"):
            MeshFieldConfig(photo_ray_samples=bad).validate()

def test_resampled_planes_describe_the_same_field_at_a_finer_grid():
    """Upsampling the mean head's planes for a finer fit keeps its density and colour (bilinear with the
    renderer's align_corners=False convention; with align_corners=True the field would shift by half a texel
    and this fails), so the fit starts from the same head prior."""
    from engine.heads.mesh_field import mean_latent, resample_planes

    G = load_generator(pack_paths().generator).generator.eval()
    ws = mean_latent(G)
    planes = G.synthesize_planes(ws)
    finer = resample_planes(planes, 4 * planes.shape[-1])
    assert finer.shape == (*planes.shape[:3], 4 * planes.shape[-1], 4 * planes.shape[-1])
    assert resample_planes(planes, 0) is planes and resample_planes(planes, planes.shape[-1]) is planes
    points = (torch.rand(1, 4000, 3, generator=torch.Generator().manual_seed(0)) - 0.5) * 0.8
    coarse_sigma = G.query_points(planes, points)["sigma"]
    fine_sigma = G.query_points(finer, points)["sigma"]
    # bilinear resampling is not exact between texel centres: compare with the field's own spread (0.0007 of
    # it here; a half-texel shift, align_corners=True, gives 0.012)
    error = (fine_sigma - coarse_sigma).abs().mean() / coarse_sigma.std()
    assert error < 0.003, error
    with pytest.raises(Exception, match="plane_size"):
        MeshFieldConfig(plane_size=96).validate()


def test_a_fit_with_finer_planes_keeps_them_finer():
    G = load_generator(pack_paths().generator).generator.eval()
    config = MeshFieldConfig(steps=2, density_points=256, colour_points=128, photo_every=0, plane_size=128)
    field = fit_mesh_field(uv_sphere(), G, config)
    assert field.planes.shape[-2:] == (128, 128) and field.generator.head_planes.shape[-1] == 128
    assert G.synthesize_planes(field.ws).shape[-1] == G.config.rendering.triplane_size  # G untouched


def test_sharpened_density_keeps_the_surface_and_steepens_the_step():
    """The fit's decoder starts as the generator's with density scaled about the iso level: σ' = 10 + g(σ − 10)
    at every point (so the extracted surface stays put), the colour features untouched; the generator given
    to the fit is not changed."""
    import copy

    from engine.heads.mesh_field import mean_latent, sharpen_density

    G = load_generator(pack_paths().generator).generator.eval()
    ws = mean_latent(G)
    planes = G.synthesize_planes(ws)
    points = (torch.rand(1, 3000, 3, generator=torch.Generator().manual_seed(3)) - 0.5) * 0.7
    sharp = copy.deepcopy(G)
    sharpen_density(sharp, 4.0, 10.0)
    before, after = G.query_points(planes, points), sharp.query_points(planes, points)
    torch.testing.assert_close(after["sigma"], 10.0 + 4.0 * (before["sigma"] - 10.0), rtol=1e-5, atol=2e-3)
    assert before["sigma"].std() > 5  # a real spread of densities, so the check above means something
    torch.testing.assert_close(after["rgb"], before["rgb"])
    with pytest.raises(Exception, match="density_gain"):
        MeshFieldConfig(density_gain=0.0).validate()


def test_hidden_feature_spread_sees_only_what_torgb_ignores():
    """Features built as a(k)·u + b(k)·v with u in the null space of ToRGB's modulated matrix and v in its row
    space: the spread is var(a)·|u|² whatever b is (the colours come from v alone), so the term pulls on the
    features that cannot change a colour and on nothing else."""
    from engine.heads.mesh_field import hidden_feature_spread, mean_latent

    G = load_generator(pack_paths().generator).generator.eval()
    ws = mean_latent(G)
    styles = G.torgb.affine(ws[:1, -1]) * G.torgb.weight_gain
    matrix = (G.torgb.weight[:, :, 0, 0] * styles).detach().double()  # (3, C)
    rng = torch.Generator().manual_seed(5)
    v = matrix.T @ torch.randn(3, 1, generator=rng, dtype=torch.float64)  # row space
    w = torch.randn(matrix.shape[1], 1, generator=rng, dtype=torch.float64)
    u = w - matrix.T @ torch.linalg.solve(matrix @ matrix.T, matrix @ w)  # null space: matrix @ u = 0
    assert float((matrix @ u).abs().max()) < 1e-9 and float(u.norm()) > 0.5
    a, b = torch.randn(500, 1, generator=rng, dtype=torch.float64), torch.randn(500, 1, generator=rng, dtype=torch.float64)

    def spread(features):
        return float(hidden_feature_spread(G, features.float()[None], ws))

    expected = float(a.var() * u.square().sum())
    assert spread(a * u.T + b * v.T) == pytest.approx(expected, rel=2e-3)
    assert spread(a * u.T + 5 * b * v.T) == pytest.approx(expected, rel=2e-3)
    assert spread(b * v.T) < 1e-3 * float(b.var() * v.square().sum())


@pytest.fixture(scope="module")
def fitted():
    # A trained decoder (the embedded pack's): densities already span the target's range. A freshly
    # initialised decoder outputs densities near 0 and Adam's L1 steps would need thousands of steps to reach
    # the ±250 of an opaque surface — head mode always starts from a trained generator.
    G = load_generator(pack_paths().generator).generator.eval()
    before = {k: v.clone() for k, v in G.state_dict().items()}
    config = MeshFieldConfig(steps=200, density_points=2048, colour_points=1024, lr_planes=0.1, lr_decoder=0.03,
                             photo_every=10, photo_views=4, sr_polish_steps=20)
    return G, before, fit_mesh_field(uv_sphere(), G, config)


def test_fit_learns_the_sphere_and_leaves_the_generator_alone(fitted):
    G, before, field = fitted
    assert all(torch.equal(v, G.state_dict()[k]) for k, v in before.items())
    first, last = field.history[0], field.history[-1]
    mean = lambda key, part: sum(r[key] for r in part) / len(part)  # noqa: E731
    assert mean("density", field.history[-20:]) < 0.9 * mean("density", field.history[:20])
    assert last["colour"] < 0.5 * first["colour"]
    photo = [r["photo"] for r in field.history if "photo" in r]
    assert len(photo) == 20 and all(math.isfinite(p) for p in photo)
    head = field.generator
    probes = torch.tensor([[[0.0, 0.0, 0.0], [0.1, 0.05, 0.0], [0.0, 0.0, 0.4], [0.35, 0.3, 0.0]]])
    sigma = head.query_points(field.planes, probes)["sigma"][0, :, 0]
    assert (sigma[:2] > 10).all() and (sigma[2:] < 10).all(), sigma
    on_top, below = torch.tensor([[[0.0, RADIUS - 0.01, 0.0]]]), torch.tensor([[[0.0, -RADIUS + 0.01, 0.0]]])
    top = head.point_colors(field.planes, field.ws, on_top)[0, 0]
    bottom = head.point_colors(field.planes, field.ws, below)[0, 0]
    assert top[0] > top[2] + 0.3 and bottom[2] > bottom[0] + 0.3, (top, bottom)


def test_fitted_field_extracts_a_sphere_mesh_through_the_generators_code(fitted):
    _, _, field = fitted
    mesh = head_mesh(field.generator, field.ws, MeshConfig(resolution=48), planes=field.planes)
    radius = np.linalg.norm(mesh.vertices, axis=1)
    assert abs(np.median(radius) - RADIUS) < 0.02 and np.percentile(np.abs(radius - RADIUS), 90) < 0.04
    red = mesh.vertex_colors[mesh.vertices[:, 1] > 0.1]
    assert red[:, 0].mean() > red[:, 2].mean() + 60


def test_the_fit_is_a_single_head_field_that_saves_and_reloads(fitted, tmp_path):
    from engine.generator.loading import save_generator

    _, _, field = fitted
    assert field.generator.is_single_head
    reloaded = load_generator(save_generator(field.generator, tmp_path / "head.safetensors")).generator
    probes = torch.tensor([[[0.0, 0.0, 0.0], [0.0, 0.0, 0.4]]])
    planes = reloaded.synthesize_planes(reloaded.mapping(torch.zeros(1, reloaded.z_dim), torch.zeros(1, 25)))
    torch.testing.assert_close(reloaded.query_points(planes, probes)["sigma"],
                               field.generator.query_points(field.planes, probes)["sigma"])


def test_photometric_targets_are_the_meshs_bare_colours_from_around_the_head():
    from engine.heads.mesh_field import photo_targets

    G = load_generator(pack_paths().generator).generator
    views = photo_targets(uv_sphere(), G, 4)
    assert views["image"].shape == (4, 3, G.img_resolution, G.img_resolution)
    native = G.config.rendering.neural_rendering_resolution
    assert views["image_raw"].shape == (4, 3, native, native)
    red = torch.tensor(RED, dtype=torch.float32) / 127.5 - 1
    centre = views["image"][:, :, G.img_resolution // 2 - 14, G.img_resolution // 2]  # above the equator
    torch.testing.assert_close(centre, red.expand(4, 3), atol=0.02, rtol=0)  # unlit: exactly the vertex colour


def test_prefetched_batches_come_in_order_raise_where_consumed_and_stop_when_closed():
    """The fit builds step s+1's batch while step s trains: the batches must be exactly make(0), make(1), …
    (a fit is reproducible only then), a failing batch must surface in the fit, and a cancelled fit must not
    leave the worker building the rest."""
    import threading

    from engine.heads.mesh_field import prefetched

    made, main = [], threading.get_ident()

    def make(i):
        made.append((i, threading.get_ident() != main))
        if i == 3:
            raise ValueError("batch 3 is bad")
        return i * 10

    stream = prefetched(make, 3)
    assert list(stream) == [0, 10, 20]
    assert [i for i, _ in made] == [0, 1, 2] and all(worker for _, worker in made)
    with pytest.raises(ValueError, match="batch 3"):
        list(prefetched(make, 5))
    made.clear()
    early = prefetched(make, 100)
    assert next(early) == 0
    early.close()
    assert [i for i, _ in made] == [0, 1]  # the one batch in flight, nothing after
    assert list(prefetched(make, 0)) == []


def test_the_polish_trains_only_the_super_resolution_and_lowers_its_error():
    """The polish lowers the super-resolved views' squared error against the mesh's and moves nothing but the
    super-resolution head (its effect on the grey border is measured on real heads, not asserted on this
    sphere: a 30-step fit leaves the prior's head at the image edges)."""
    from engine.generator.triplane import RenderOptions
    from engine.heads.mesh_field import photo_targets, polish_superresolution

    G = load_generator(pack_paths().generator).generator.eval()
    fitted = fit_mesh_field(uv_sphere(), G, MeshFieldConfig(steps=30, density_points=512, colour_points=256,
                                                            photo_every=0, sr_polish_steps=0))
    head, ws = fitted.generator, fitted.ws
    assert fitted.sr_polish == {}
    views = photo_targets(uv_sphere(), head, 4)

    def rendered():
        with torch.no_grad():
            return head.render(ws.expand(4, -1, -1), views["c"],
                               RenderOptions(background="white", deterministic_samples=True))

    before_state = {k: v.clone() for k, v in head.state_dict().items()}
    before = rendered()["image"]
    config = MeshFieldConfig(steps=DEFAULT_FIELD_STEPS, sr_polish_steps=60, photo_views=4)
    record = polish_superresolution(head, ws, views, config)
    after = rendered()["image"]
    changed = {k for k, v in head.state_dict().items() if not torch.equal(v, before_state[k])}
    assert changed and all(k.startswith("superresolution.") for k in changed), changed
    assert not any(p.requires_grad for p in head.parameters())
    error = lambda images: float(((images - views["image"]) ** 2).mean())  # noqa: E731
    assert error(after) < 0.8 * error(before), (error(before), error(after))
    assert record["steps"] == 60 and record["last_mse"] < record["first_mse"]


def test_the_polish_is_scaled_with_the_fit_reported_and_cancellable():
    config = MeshFieldConfig(sr_polish_steps=200)
    assert config.polish_steps() == 200
    assert MeshFieldConfig(steps=DEFAULT_FIELD_STEPS // 2, sr_polish_steps=200).polish_steps() == 100
    assert MeshFieldConfig(steps=3 * DEFAULT_FIELD_STEPS, sr_polish_steps=200).polish_steps() == 200
    assert MeshFieldConfig(steps=1, sr_polish_steps=200).polish_steps() == 1
    assert MeshFieldConfig(steps=1, sr_polish_steps=0).polish_steps() == 0
    for bad in (dict(sr_polish_steps=-1), dict(sr_polish_batch=0), dict(sr_polish_lr=0.0)):
        with pytest.raises(Exception, match="sr_polish"):
            MeshFieldConfig(**bad).validate()

    G = load_generator(pack_paths().generator).generator.eval()
    small = dict(density_points=64, colour_points=32, photo_every=0, photo_views=2)
    records = []
    field = fit_mesh_field(uv_sphere(), G, MeshFieldConfig(steps=3, sr_polish_steps=DEFAULT_FIELD_STEPS, **small),
                           on_step=records.append)
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert all("sr_polish" in r for r in records[3:]) and not any("sr_polish" in r for r in records[:3])
    assert len(field.history) == 3 and field.sr_polish["steps"] == 3
    asked = []
    stop_in_polish = lambda: asked.append(1) or len(asked) > 4  # noqa: E731  (3 fit steps, then the polish)
    assert fit_mesh_field(uv_sphere(), G, MeshFieldConfig(steps=3, sr_polish_steps=DEFAULT_FIELD_STEPS, **small),
                          should_stop=stop_in_polish) is None
