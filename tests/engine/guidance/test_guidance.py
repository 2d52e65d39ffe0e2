"""Tests of the diffusion guidance stage on a tiny random SD-1.5-layout folder built offline."""

from __future__ import annotations

import shutil
import socket
from collections import deque

import numpy as np
import pytest
import torch

from engine.errors import CheckpointError, ConfigError, InputError
from engine.guidance import (
    Guidance,
    GuidanceConfig,
    TinyDiffusionSpec,
    build_tiny_diffusion_folder,
    canny_edges,
    depth_control,
    load_diffusion_models,
    resolve_dtype,
)

PROMPT = "a zombie head"


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def tiny(tiny_diffusion):
    return tiny_diffusion


@pytest.fixture(scope="module")
def guidance(tiny):
    models = load_diffusion_models(tiny.sd_folder, tiny.edge, tiny.depth)
    return Guidance(models, GuidanceConfig(prompt=PROMPT))


def _latents(guidance, batch=2, seed=1):
    size = guidance.models.unet.config.sample_size
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, guidance.models.latent_channels, size, size, generator=gen)


def _controls(batch=2, size=32, seed=2):
    gen = torch.Generator().manual_seed(seed)
    return {
        "edge": (torch.rand(batch, 3, size, size, generator=gen) > 0.8).float(),
        "depth": torch.rand(batch, 1, size, size, generator=gen).expand(-1, 3, -1, -1),
    }


# --------------------------------------------------------------------------------------------------------
# Loading.


def test_load_is_offline_frozen_and_shares_one_unet(tiny, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("load_diffusion_models tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    models = load_diffusion_models(tiny.sd_folder, edge_controlnet=tiny.edge, depth_controlnet=tiny.depth)
    assert models.dtype == torch.float32 and models.device == torch.device("cpu")
    assert set(models.controlnets) == {"edge", "depth"}
    assert models.vae_downsample == 4 and models.vae_scaling_factor == pytest.approx(0.18215)
    assert type(models.scheduler).__name__ == "DDIMScheduler"
    for module in (models.unet, models.vae, models.text_encoder, *models.controlnets.values()):
        assert not module.training
        assert not any(p.requires_grad for p in module.parameters())
        assert next(module.parameters()).dtype == torch.float32
    tokens = models.tokenizer([PROMPT, ""], padding="max_length", max_length=models.text_length).input_ids
    assert [len(row) for row in tokens] == [77, 77]
    zombie = models.tokenizer.convert_ids_to_tokens(tokens[0][:5])
    assert zombie == ["<|startoftext|>", "a</w>", "zombie</w>", "head</w>", "<|endoftext|>"]
    assert tokens[1][:2] == [models.tokenizer.bos_token_id, models.tokenizer.eos_token_id]


def test_missing_subfolder_names_the_path(tiny, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny.sd_folder, broken)
    shutil.rmtree(broken / "unet")
    with pytest.raises(CheckpointError, match=r"unet[/\\]config\.json not found.*Stable Diffusion 1\.5"):
        load_diffusion_models(broken)
    shutil.rmtree(broken / "tokenizer")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_diffusion_models(tmp_path / "nowhere")
    with pytest.raises(CheckpointError, match="edge ControlNet folder .*missing_cn"):
        load_diffusion_models(tiny.sd_folder, edge_controlnet=tmp_path / "missing_cn")


def test_missing_weights_and_bad_dtype(tiny, tmp_path):
    broken = tmp_path / "noweights"
    shutil.copytree(tiny.sd_folder, broken)
    (broken / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"vae.*no weights found"):
        load_diffusion_models(broken)
    with pytest.raises(ConfigError):
        load_diffusion_models(tiny.sd_folder, dtype="int8")


def test_resolve_dtype():
    assert resolve_dtype("auto", "cpu") == torch.float32
    assert resolve_dtype("fp16", "cpu") == torch.float16
    assert resolve_dtype("bf16", "cpu") == torch.bfloat16
    assert resolve_dtype(torch.float32, "cpu") == torch.float32
    with pytest.raises(ConfigError):
        resolve_dtype("fp8", "cpu")


# --------------------------------------------------------------------------------------------------------
# Schedule and noising.


def test_ddim_timesteps_match_scheduler(guidance):
    scheduler_steps = guidance.scheduler.timesteps.tolist()
    assert len(scheduler_steps) == 50
    for k in (0, 1, 35, 49):
        assert guidance.timestep_for_index(k) == scheduler_steps[k]
    # SD 1.5 settings ("leading" spacing, steps_offset=1): t = 981 - 20 k.
    assert [guidance.timestep_for_index(k) for k in (0, 35, 49)] == [981, 281, 1]
    with pytest.raises(ConfigError):
        guidance.timestep_for_index(50)


def test_alphas_cumprod_is_sd15_scaled_linear(guidance):
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    expected = torch.cumprod(1 - betas, 0).float()
    torch.testing.assert_close(guidance.alphas_cumprod, expected)


def test_add_noise_matches_scheduler_and_tweedie_inverts_it(guidance):
    clean = _latents(guidance)
    noise = torch.randn(clean.shape, generator=torch.Generator().manual_seed(3))
    for t in (1, 281, 981):
        noisy = guidance.add_noise(clean, noise, t)
        reference = guidance.scheduler.add_noise(clean, noise, torch.tensor([t]))
        torch.testing.assert_close(noisy, reference)
        torch.testing.assert_close(guidance.tweedie_x0(noisy, noise, t), clean, atol=2e-4, rtol=1e-4)
    with pytest.raises(InputError):
        guidance.add_noise(clean, noise, 1000)


# --------------------------------------------------------------------------------------------------------
# Noise prediction.


def test_score_step_shapes_and_determinism(guidance):
    latents = _latents(guidance)
    controls = _controls()
    out = guidance.score_step(latents, 35, controls, torch.Generator().manual_seed(7))
    assert out.t == 281 and out.step_index == 35
    for name in ("noise", "noisy_latents", "eps_text", "eps_uncond", "x0_hat"):
        value = getattr(out, name)
        assert value.shape == latents.shape and value.dtype == latents.dtype, name
        assert torch.isfinite(value).all(), name
    assert out.alpha_bar_t == pytest.approx(float(guidance.alphas_cumprod[281]))
    assert out.alpha_bar_at_index == pytest.approx(float(guidance.alphas_cumprod[35]))
    torch.testing.assert_close(out.noisy_latents, guidance.add_noise(latents, out.noise, 281))
    eps_cfg = out.eps_uncond + 7.5 * (out.eps_text - out.eps_uncond)
    torch.testing.assert_close(out.eps_cfg, eps_cfg)
    torch.testing.assert_close(out.score, 7.5 * (out.eps_text - out.eps_uncond))
    torch.testing.assert_close(out.x0_hat, guidance.tweedie_x0(out.noisy_latents, eps_cfg, 281))

    again = guidance.score_step(latents, 35, controls, torch.Generator().manual_seed(7))
    assert torch.equal(again.noise, out.noise) and torch.equal(again.eps_text, out.eps_text)
    other = guidance.score_step(latents, 35, controls, torch.Generator().manual_seed(8))
    assert not torch.equal(other.noise, out.noise)


def test_cfg_halves_follow_the_prompts(guidance):
    noisy = _latents(guidance)
    zombie = guidance.encode_prompt(PROMPT)
    statue = guidance.encode_prompt("portrait of a statue")
    assert zombie.shape == (2, 77, 32)
    assert guidance.encode_prompt(PROMPT) is zombie  # cached
    uncond_a, text_a = guidance.predict_noise(noisy, 281, text_embeddings=zombie)
    uncond_b, text_b = guidance.predict_noise(noisy, 281, text_embeddings=statue)
    torch.testing.assert_close(uncond_a, uncond_b)  # same (empty) negative prompt
    assert (text_a - text_b).abs().max() > 1e-4
    assert (text_a - uncond_a).abs().max() > 1e-4
    # Swapping prompt and negative swaps the two halves: the CFG batch keeps [negative, prompt] order.
    swapped_uncond, swapped_text = guidance.predict_noise(
        noisy, 281, text_embeddings=guidance.encode_prompt("", negative=PROMPT)
    )
    torch.testing.assert_close(swapped_uncond, text_a, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(swapped_text, uncond_a, atol=1e-5, rtol=1e-5)
    # Batching does not mix items: item 1 alone gives the same prediction.
    alone_uncond, alone_text = guidance.predict_noise(noisy[1:], 281, text_embeddings=zombie)
    torch.testing.assert_close(alone_text, text_a[1:], atol=1e-5, rtol=1e-5)


def test_controlnet_scale_zero_equals_no_controlnet(guidance):
    noisy = _latents(guidance)
    controls = _controls()
    plain = guidance.predict_noise(noisy, 281)
    zero = guidance.predict_noise(noisy, 281, controls, controlnet_scale=0.0)
    full = guidance.predict_noise(noisy, 281, controls, controlnet_scale=1.0)
    double = guidance.predict_noise(noisy, 281, controls, controlnet_scale=2.0)
    for a, b in zip(plain, zero):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    assert (full[1] - plain[1]).abs().max() > 1e-4
    assert (double[1] - full[1]).abs().max() > 1e-4
    depth_only = guidance.predict_noise(noisy, 281, {"depth": controls["depth"]})
    per_kind = guidance.predict_noise(noisy, 281, controls, controlnet_scale={"edge": 0.0, "depth": 1.0})
    torch.testing.assert_close(per_kind[1], depth_only[1], atol=1e-6, rtol=1e-6)
    assert (depth_only[1] - full[1]).abs().max() > 1e-4  # the edge ControlNet contributes when on


def test_control_images_are_resized_and_broadcast(guidance):
    noisy = _latents(guidance)
    control = _controls(batch=1)["depth"]
    a = guidance.predict_noise(noisy, 281, {"depth": control})
    b = guidance.predict_noise(noisy, 281, {"depth": control.expand(2, -1, -1, -1)})
    torch.testing.assert_close(a[1], b[1])
    # Each batch item (in both CFG halves) sees its own control image.
    controls = _controls()
    both = guidance.predict_noise(noisy, 281, controls)
    second = guidance.predict_noise(noisy[1:], 281, {k: v[1:] for k, v in controls.items()})
    for batched, alone in zip(both, second):
        torch.testing.assert_close(batched[1:], alone, atol=1e-5, rtol=1e-5)
    bigger = torch.nn.functional.interpolate(control, scale_factor=2, mode="nearest")
    c = guidance.predict_noise(noisy, 281, {"depth": bigger})
    assert torch.isfinite(c[1]).all()
    with pytest.raises(InputError, match="no loaded ControlNet"):
        guidance.predict_noise(noisy, 281, {"normal": control})
    with pytest.raises(InputError):
        guidance.predict_noise(noisy[:, :3], 281)


def test_encode_images_is_differentiable_and_decodes(guidance):
    images = (torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(4)) * 2 - 1).requires_grad_()
    latents = guidance.encode_images(images, sample=False)
    assert latents.shape == (2, 4, 8, 8) and latents.requires_grad
    (latents * torch.randn_like(latents)).sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    # Posterior mean is deterministic; posterior samples follow the generator.
    torch.testing.assert_close(guidance.encode_images(images, sample=False), latents)
    s1 = guidance.encode_images(images, torch.Generator().manual_seed(0), sample=True)
    s2 = guidance.encode_images(images, torch.Generator().manual_seed(0), sample=True)
    torch.testing.assert_close(s1, s2)
    decoded = guidance.decode_latents(latents.detach())
    assert decoded.shape == images.shape and decoded.abs().max() <= 1
    with pytest.raises(InputError, match="multiple"):
        guidance.encode_images(torch.zeros(1, 3, 30, 30))


def _saved_bytes_while(fn):
    """Bytes of the tensors autograd saves for backward while ``fn`` runs (parameters excluded)."""
    saved = []

    def pack(tensor):
        if not isinstance(tensor, torch.nn.Parameter):
            saved.append(tensor.numel() * tensor.element_size())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out = fn()
    return out, sum(saved)


def test_vae_slicing_on_the_gradient_path_keeps_no_encoder_activations_and_changes_nothing(guidance, tiny):
    from engine.guidance import MemoryOptions

    sliced = Guidance(load_diffusion_models(tiny.sd_folder, memory=MemoryOptions(vae_slicing=True)), GuidanceConfig(prompt=PROMPT))
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(5)) * 2 - 1
    weights = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(6))
    results = {}
    for name, g in (("plain", guidance), ("sliced", sliced)):
        x = images.clone().requires_grad_()
        latents, saved = _saved_bytes_while(lambda: g.encode_images(x, torch.Generator().manual_seed(7), sample=True))
        (latents * weights).sum().backward()
        results[name] = (latents.detach(), x.grad, saved)
    torch.testing.assert_close(results["sliced"][0], results["plain"][0])  # same posterior sample
    torch.testing.assert_close(results["sliced"][1], results["plain"][1])  # same gradient
    # Without slicing the encoder keeps several activations per image; with it, only the inputs of each
    # recomputed slice (the images themselves) and the posterior's few small tensors.
    assert results["sliced"][2] < results["plain"][2] / 4
    assert results["sliced"][2] <= 2 * images.numel() * 4
    with torch.no_grad():  # without gradients the ordinary (sliced) encode runs
        torch.testing.assert_close(sliced.encode_images(images, sample=False), guidance.encode_images(images, sample=False))


def test_pixel_space_model_passes_images_through(tmp_path):
    spec = TinyDiffusionSpec(image_size=16, pixel_space=True)
    folder = build_tiny_diffusion_folder(tmp_path / "pixel", controlnets=("edge",), spec=spec)
    guidance = Guidance.from_folder(
        folder.sd_folder, edge_controlnet=folder.edge, config=GuidanceConfig(prompt=PROMPT, precision="fp32")
    )
    assert guidance.models.vae is None and guidance.models.vae_downsample == 1
    images = torch.rand(1, 3, 16, 16) * 2 - 1
    assert guidance.encode_images(images) is images
    out = guidance.score_step(images, 40, {"edge": canny_edges(images)}, torch.Generator().manual_seed(0))
    assert out.x0_hat.shape == images.shape


def test_tiny_folder_refuses_to_overwrite(tiny):
    with pytest.raises(ConfigError, match="not empty"):
        build_tiny_diffusion_folder(tiny.sd_folder)
    with pytest.raises(ConfigError, match="unknown kind"):
        build_tiny_diffusion_folder(tiny.sd_folder.parent / "x", controlnets=("normal",))


def test_guidance_config_validation():
    with pytest.raises(ConfigError):
        GuidanceConfig(ddim_steps=0)
    with pytest.raises(ConfigError):
        GuidanceConfig(guidance_scale=-1)
    with pytest.raises(ConfigError):
        GuidanceConfig(precision="fp64")


# --------------------------------------------------------------------------------------------------------
# Canny.


def _reference_canny(gray: np.ndarray, low: float, high: float) -> np.ndarray:
    """Pixel-by-pixel Canny written from OpenCV's algorithm description (integer direction test, BFS)."""
    height, width = gray.shape
    img = gray.astype(np.int64)

    def pixel(y, x):
        return img[min(max(y, 0), height - 1), min(max(x, 0), width - 1)]

    dx = np.zeros((height, width), np.int64)
    dy = np.zeros((height, width), np.int64)
    for y in range(height):
        for x in range(width):
            dx[y, x] = (pixel(y - 1, x + 1) + 2 * pixel(y, x + 1) + pixel(y + 1, x + 1)) - (
                pixel(y - 1, x - 1) + 2 * pixel(y, x - 1) + pixel(y + 1, x - 1)
            )
            dy[y, x] = (pixel(y + 1, x - 1) + 2 * pixel(y + 1, x) + pixel(y + 1, x + 1)) - (
                pixel(y - 1, x - 1) + 2 * pixel(y - 1, x) + pixel(y - 1, x + 1)
            )
    mag = np.abs(dx) + np.abs(dy)

    def m(y, x):
        return mag[y, x] if 0 <= y < height and 0 <= x < width else 0

    candidate = np.zeros((height, width), bool)
    strong = np.zeros((height, width), bool)
    for y in range(height):
        for x in range(width):
            v = mag[y, x]
            if v <= low:
                continue
            ax, ay = abs(int(dx[y, x])), abs(int(dy[y, x])) << 15
            tg22 = ax * 13573
            tg67 = tg22 + (ax << 16)
            if ay < tg22:
                keep = v > m(y, x - 1) and v >= m(y, x + 1)
            elif ay > tg67:
                keep = v > m(y - 1, x) and v >= m(y + 1, x)
            else:
                s = -1 if (dx[y, x] < 0) != (dy[y, x] < 0) else 1
                keep = v > m(y - 1, x - s) and v > m(y + 1, x + s)
            if keep:
                candidate[y, x] = True
                strong[y, x] = v > high
    edges = strong.copy()
    queue = deque(zip(*np.nonzero(strong)))
    while queue:
        y, x = queue.popleft()
        for ny in (y - 1, y, y + 1):
            for nx in (x - 1, x, x + 1):
                if 0 <= ny < height and 0 <= nx < width and candidate[ny, nx] and not edges[ny, nx]:
                    edges[ny, nx] = True
                    queue.append((ny, nx))
    return edges


def _square(size=20, top=5, left=6, bottom=13, right=15, value=1.0):
    image = -torch.ones(1, 3, size, size)
    image[..., top : bottom + 1, left : right + 1] = value
    return image


def test_canny_square_gives_thin_edges_on_the_border():
    top, left, bottom, right = 5, 6, 13, 15
    edges = canny_edges(_square(top=top, left=left, bottom=bottom, right=right))
    assert edges.shape == (1, 3, 20, 20) and edges.dtype == torch.float32
    assert torch.equal(edges[:, 0], edges[:, 1]) and torch.equal(edges[:, 0], edges[:, 2])
    e = edges[0, 0].bool()
    # Away from the corners each side is exactly one pixel thick, where OpenCV puts it: ties go to the
    # outer pixel on the left/top sides and to the inner pixel on the right/bottom sides.
    for row in range(top + 2, bottom - 1):
        assert torch.nonzero(e[row]).flatten().tolist() == [left - 1, right]
    for col in range(left + 2, right - 1):
        assert torch.nonzero(e[:, col]).flatten().tolist() == [top - 1, bottom]
    # Nothing inside or outside the one-pixel band around the square's boundary.
    band = torch.zeros(20, 20, dtype=torch.bool)
    band[top - 1 : bottom + 2, left - 1 : right + 2] = True
    band[top + 1 : bottom, left + 1 : right] = False
    assert not (e & ~band).any()
    assert e.sum() > 0


def test_canny_matches_pixelwise_reference():
    gen = torch.Generator().manual_seed(0)
    for trial in range(3):
        coarse = torch.rand(1, 1, 6, 7, generator=gen) * 255
        image = torch.nn.functional.interpolate(coarse, size=(18, 21), mode="bilinear", align_corners=False)
        image = (image + torch.randn(image.shape, generator=gen) * 12).clamp(0, 255).floor()
        for low, high in ((50, 250), (20, 90), (100, 400)):
            ours = canny_edges(image, low, high, value_range=(0.0, 255.0))[0, 0].bool().numpy()
            ref = _reference_canny(image[0, 0].numpy(), low, high)
            assert (ours == ref).all(), (trial, low, high, np.argwhere(ours != ref))


def test_canny_thresholds_and_hysteresis():
    square = _square()
    # A straight 0→255 step has L1 magnitude 1020 (corners reach 1530): thresholds above it find nothing.
    assert canny_edges(square, 1600, 1700).sum() == 0
    assert canny_edges(square, 1700, 1600).sum() == 0  # swapped thresholds are reordered
    sides = canny_edges(square, 50, 1100)[0, 0].bool()  # only corner pixels seed; weak sides attach
    assert sides.sum() == canny_edges(square, 50, 250)[0, 0].bool().sum()
    # A dim square (step 0→40: magnitude 160 on the sides, at most 240 at corners) only has weak edges:
    # no strong seed, no edges.
    dim = _square(value=40 / 127.5 - 1)
    assert canny_edges(dim, 50, 250).sum() == 0
    assert canny_edges(dim, 50, 150).sum() > 0
    # A bar that is bright on its left half and dim on its right half: the dim part's weak edges are
    # connected to the bright part's strong ones and survive all the way along.
    bar = -torch.ones(1, 3, 12, 40)
    bar[..., 4:8, 2:20] = 1.0
    bar[..., 4:8, 20:38] = 40 / 127.5 - 1
    e = canny_edges(bar, 50, 250)[0, 0].bool()
    assert e[3, 4:17].all() and e[3, 21:36].all()  # upper border of the bright and of the dim half
    assert e[4:7, 37].all()  # the dim half's far end
    # The same dim part standing alone is dropped.
    alone = bar.clone()
    alone[..., 4:8, 2:20] = -1.0
    assert canny_edges(alone, 50, 250).sum() == 0


def test_canny_value_ranges_and_batches_agree():
    square = _square()
    unit = (square + 1) / 2
    torch.testing.assert_close(canny_edges(unit, value_range=(0.0, 1.0)), canny_edges(square))
    batch = torch.cat([square, -torch.ones_like(square)])
    out = canny_edges(batch)
    torch.testing.assert_close(out[:1], canny_edges(square))
    assert out[1].sum() == 0
    with pytest.raises(InputError):
        canny_edges(torch.zeros(3, 8, 8))


# --------------------------------------------------------------------------------------------------------
# Depth.


def test_depth_control_near_is_bright_background_black():
    depth = torch.full((2, 1, 6, 6), 3.3)
    mask = torch.zeros(2, 1, 6, 6)
    mask[:, :, 1:5, 1:5] = 1.0
    depth[:, :, 1:5, 1:5] = torch.linspace(2.4, 2.9, 4).view(1, 1, 1, 4)  # nearer on the left
    depth[1] = depth[1] * 2  # a different scale must normalise to the same map
    out = depth_control(depth, mask)
    assert out.shape == (2, 3, 6, 6)
    assert out[:, :, mask[0, 0] == 0].abs().max() == 0
    fg = out[0, 0, 1:5, 1:5]
    assert fg.max() == pytest.approx(1.0) and fg.min() == pytest.approx(0.0)
    assert (fg[:, :-1] > fg[:, 1:]).all()  # brightness decreases with depth
    inv = 1 / torch.linspace(2.4, 2.9, 4)
    torch.testing.assert_close(fg[0], (inv - inv.min()) / (inv.max() - inv.min()))
    torch.testing.assert_close(out[0], out[1])
    # Without a mask, every finite positive depth is foreground (the far background becomes 0 = darkest).
    no_mask = depth_control(depth[:1])
    assert no_mask[0, 0, 0, 0] == 0 and no_mask.max() == pytest.approx(1.0)
    # Pixels outside the mask neither show up nor stretch the range, even when they are nearest.
    occluder = depth.clone()
    occluder[:, :, 0, 0] = 0.5
    torch.testing.assert_close(depth_control(occluder, mask), out)
    with pytest.raises(InputError):
        depth_control(depth, mask[:1])


def test_cpu_encode_with_gradients_runs_image_by_image_and_matches_the_batch(guidance):
    """On CPU a batch with gradients is encoded one image at a time (faster there); the posterior sample and
    the gradient must be those of encoding the batch at once, image order included."""
    vae = guidance.models.vae
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(8)) * 2 - 1
    weights = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(9))
    calls = []
    hook = vae.encoder.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    try:
        x = images.clone().requires_grad_()
        latents = guidance.encode_images(x, torch.Generator().manual_seed(10), sample=True)
        (latents * weights).sum().backward()
    finally:
        hook.remove()
    assert calls == [1, 1, 1]

    reference_x = images.clone().requires_grad_()
    posterior = vae.encode(reference_x).latent_dist  # the whole batch in one call
    reference = posterior.sample(generator=torch.Generator().manual_seed(10)) * guidance.models.vae_scaling_factor
    (reference * weights).sum().backward()
    torch.testing.assert_close(latents.detach(), reference.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(x.grad, reference_x.grad, atol=1e-5, rtol=1e-5)
    calls.clear()
    hook = vae.encoder.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    try:
        with torch.no_grad():  # no gradients: one batched call
            guidance.encode_images(images, sample=False)
    finally:
        hook.remove()
    assert calls == [3]
