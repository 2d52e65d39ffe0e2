"""Tests for the StyleGAN2 networks, the super-resolution head and the tri-grid decoder.

Shapes of PanoHead-size modules are derived from the reference channel formula
``min(channel_base // res, channel_max)`` (32768 / 512): 512 channels up to 64², 256 at 128², 128 at 256².
The PanoHead-size networks are built on the ``meta`` device (no memory, no forward).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from engine.errors import ConfigError, InputError
from engine.generator.config import get_preset
from engine.generator.decoder import OSGDecoder
from engine.generator.stylegan2 import (
    FullyConnectedLayer,
    MappingNetwork,
    StyleGAN2Backbone,
    SynthesisBlock,
    SynthesisNetwork,
    build_background_synthesis,
    build_backbone,
    build_pose_mapping,
    normalize_2nd_moment,
    synthesis_channels,
)
from engine.generator.superresolution import SuperResolution, build_superresolution

TINY = get_preset("tiny")


@pytest.fixture(scope="module")
def tiny_backbone() -> StyleGAN2Backbone:
    torch.manual_seed(0)
    g = build_backbone(TINY).eval()
    with torch.no_grad():
        g.mapping.w_avg.normal_()
        for name, p in g.named_parameters():
            if name.endswith("noise_strength"):
                p.fill_(0.2)  # make noise visible (it starts at zero)
    return g


def _latents(n=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, TINY.z_dim, generator=gen), torch.randn(n, TINY.c_dim, generator=gen)


# ------------------------------------------------------------------------------------------------------
# Layers and mapping
# ------------------------------------------------------------------------------------------------------
def test_fully_connected_layer_equalised_learning_rate_by_hand():
    torch.manual_seed(0)
    layer = FullyConnectedLayer(4, 3, activation="lrelu", lr_multiplier=0.01, bias_init=2.0)
    x = torch.randn(5, 4)
    w = layer.weight.detach().numpy() * 0.01 / math.sqrt(4)
    b = layer.bias.detach().numpy() * 0.01
    assert np.allclose(layer.bias.detach().numpy(), 2.0)
    pre = x.numpy() @ w.T + b
    want = np.where(pre > 0, pre, 0.2 * pre) * math.sqrt(2)
    np.testing.assert_allclose(layer(x).detach().numpy(), want, rtol=1e-5, atol=1e-6)
    linear = FullyConnectedLayer(4, 3)
    want_lin = x.numpy() @ (linear.weight.detach().numpy() / 2).T
    np.testing.assert_allclose(linear(x).detach().numpy(), want_lin, rtol=1e-5, atol=1e-6)


def test_normalize_2nd_moment_gives_unit_rms():
    z = torch.randn(3, 64) * 7
    assert torch.allclose(normalize_2nd_moment(z).square().mean(dim=1), torch.ones(3), atol=1e-5)


def test_mapping_shapes_and_conditioning(tiny_backbone):
    z, c = _latents()
    ws = tiny_backbone.mapping(z, c)
    assert ws.shape == (2, TINY.num_ws, TINY.w_dim) and ws.dtype == torch.float32
    assert torch.equal(ws[:, 0], ws[:, -1])  # one w broadcast to every layer
    # Inputs are RMS-normalised: scaling z changes nothing; the camera c does matter.
    torch.testing.assert_close(tiny_backbone.mapping(3 * z, c), ws)
    assert not torch.allclose(tiny_backbone.mapping(z, c + 1), ws)


def test_truncation_psi_zero_gives_w_avg_and_cutoff_leaves_later_ws(tiny_backbone):
    z, c = _latents()
    mapping = tiny_backbone.mapping
    full = mapping(z, c)
    at_avg = mapping(z, c, truncation_psi=0)
    assert torch.equal(at_avg, mapping.w_avg.expand_as(at_avg))
    cut = mapping(z, c, truncation_psi=0.5, truncation_cutoff=3)
    assert torch.equal(cut[:, 3:], full[:, 3:])
    torch.testing.assert_close(cut[:, :3], mapping.w_avg + 0.5 * (full[:, :3] - mapping.w_avg))


def test_update_emas_moves_w_avg_toward_batch_mean():
    torch.manual_seed(1)
    mapping = MappingNetwork(z_dim=8, c_dim=0, w_dim=6, num_ws=2, num_layers=2, w_avg_beta=0.9)
    z = torch.randn(4, 8)
    before = mapping.w_avg.clone()
    ws = mapping(z, None, update_emas=True)
    torch.testing.assert_close(mapping.w_avg, 0.9 * before + 0.1 * ws[:, 0].mean(dim=0))


def test_pose_mapping_option_matches_panohead_t_mapping():
    t_mapping = build_pose_mapping(TINY)
    shapes = {k: tuple(v.shape) for k, v in t_mapping.state_dict().items()}
    assert shapes == {
        "embed.weight": (3, 25), "embed.bias": (3,),
        "fc0.weight": (3, TINY.z_dim + 3), "fc0.bias": (3,),
        "fc1.weight": (3, 3), "fc1.bias": (3,),
        "w_avg": (3,),
    }
    assert t_mapping.fc0.activation == "lrelu" and t_mapping.fc1.activation == "linear"
    assert t_mapping.fc0.weight_gain == pytest.approx(1 / math.sqrt(TINY.z_dim + 3))  # lr_multiplier 1
    z, c = _latents()
    assert t_mapping(z, c).shape == (2, 1, 3)


def test_mapping_rejects_wrong_latent_shape(tiny_backbone):
    with pytest.raises(InputError):
        tiny_backbone.mapping(torch.zeros(2, TINY.z_dim + 1), torch.zeros(2, 25))
    with pytest.raises(InputError):
        tiny_backbone.mapping(torch.zeros(2, TINY.z_dim), torch.zeros(2, 16))


# ------------------------------------------------------------------------------------------------------
# Synthesis
# ------------------------------------------------------------------------------------------------------
def test_tiny_backbone_synthesis_shape_and_num_ws(tiny_backbone):
    assert tiny_backbone.num_ws == TINY.num_ws == tiny_backbone.synthesis.num_ws == 8
    z, c = _latents()
    with torch.no_grad():
        planes = tiny_backbone(z, c, noise_mode="const")
    size = TINY.rendering.triplane_size
    assert planes.shape == (2, TINY.backbone_channels, size, size) and planes.dtype == torch.float32
    assert torch.isfinite(planes).all()


def test_synthesis_noise_modes(tiny_backbone):
    z, c = _latents()
    with torch.no_grad():
        ws = tiny_backbone.mapping(z, c)
        const_a = tiny_backbone.synthesis(ws, noise_mode="const")
        const_b = tiny_backbone.synthesis(ws, noise_mode="const")
        none = tiny_backbone.synthesis(ws, noise_mode="none")
        rand_a = tiny_backbone.synthesis(ws, noise_mode="random")
        rand_b = tiny_backbone.synthesis(ws, noise_mode="random")
    assert torch.equal(const_a, const_b)
    assert not torch.allclose(const_a, none)
    assert not torch.allclose(rand_a, rand_b)
    with pytest.raises(ConfigError):
        tiny_backbone.synthesis(ws, noise_mode="sometimes")


def test_fused_and_unfused_synthesis_agree(tiny_backbone):
    z, c = _latents()
    with torch.no_grad():
        ws = tiny_backbone.mapping(z, c)
        fused = tiny_backbone.synthesis(ws, noise_mode="const", fused_modconv=True)
        unfused = tiny_backbone.synthesis(ws, noise_mode="const", fused_modconv=False)
    torch.testing.assert_close(fused, unfused, rtol=1e-4, atol=1e-4)


def test_synthesis_uses_every_w(tiny_backbone):
    z, c = _latents(n=1)
    with torch.no_grad():
        ws = tiny_backbone.mapping(z, c)
        base = tiny_backbone.synthesis(ws, noise_mode="const")
        for idx in range(tiny_backbone.num_ws):
            bumped = ws.clone()
            bumped[:, idx] += 1
            assert not torch.allclose(tiny_backbone.synthesis(bumped, noise_mode="const"), base), idx
    with pytest.raises(InputError):
        tiny_backbone.synthesis(ws[:, :-1])


def test_synthesis_gradients_reach_synthesis_weights(tiny_backbone):
    z, c = _latents(n=1)
    ws = tiny_backbone.mapping(z, c).detach()
    tiny_backbone.zero_grad()
    tiny_backbone.train()
    try:
        tiny_backbone.synthesis(ws, noise_mode="const").square().mean().backward()
    finally:
        tiny_backbone.eval()
    assert tiny_backbone.synthesis.b4.const.grad is not None
    assert tiny_backbone.synthesis.b32.conv0.weight.grad.abs().sum() > 0


def test_fp16_blocks_run_in_float32_on_cpu():
    torch.manual_seed(0)
    net = SynthesisNetwork(w_dim=8, img_resolution=16, img_channels=3, channel_base=64, channel_max=8,
                           num_fp16_res=2, conv_clamp=256)
    assert net.b16.use_fp16 and net.b8.use_fp16 and not net.b4.use_fp16
    img = net(torch.randn(1, net.num_ws, 8), noise_mode="none")
    assert img.dtype == torch.float32 and img.shape == (1, 3, 16, 16)


def test_no_upsampling_block_keeps_resolution():
    block = SynthesisBlock(6, 4, w_dim=8, resolution=8, img_channels=3, is_last=False, upsample=False)
    x, img = block(torch.randn(2, 6, 8, 8), torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8))
    assert x.shape == (2, 4, 8, 8) and img.shape == (2, 3, 8, 8)
    assert block.conv0.up == 1
    # StyleGAN2 initialisation: styles start at 1 (affine bias), noise switched off, biases zero.
    assert torch.equal(block.conv0.affine.bias, torch.ones(6)) and torch.equal(block.torgb.affine.bias, torch.ones(4))
    assert block.conv1.noise_strength.item() == 0 and torch.equal(block.conv1.bias, torch.zeros(4))


def _fill_deterministic(model: torch.nn.Module) -> None:
    """Give every parameter/buffer (except the fixed FIR filters) asymmetric, reproducible values."""
    state = model.state_dict()
    with torch.no_grad():
        for i, name in enumerate(sorted(state)):
            if name.endswith("resample_filter"):
                continue
            t = state[name]
            values = torch.sin(torch.arange(t.numel(), dtype=torch.float64) * 0.73 + i) * 0.8
            t.copy_(values.reshape(t.shape).to(t.dtype))


# Output of PanoHead's own ``training.networks_stylegan2.Generator`` (run once, outside this repo) for the
# weights above: z_dim 5, c_dim 3, w_dim 4, 8² × 3, channel_base 64, channel_max 6, 2 mapping layers,
# psi 0.7 with cutoff 2, noise_mode 'const'. Values of image 0 at [:, ::3, ::3].
PANOHEAD_REFERENCE_PIXELS = [
    -1.5619268417358398, -1.5850868225097656, -1.3890211582183838, -1.0060832500457764, -1.4981263875961304,
    -1.20191490650177, -0.9519699811935425, -1.3913013935089111, -1.3492168188095093, 0.5725644826889038,
    0.495398610830307, 0.39468562602996826, 0.13626384735107422, 0.2908409833908081, 0.0994923934340477,
    0.12203797698020935, 0.3393692970275879, 0.16355422139167786, 1.126197099685669, 1.1613768339157104,
    1.0310368537902832, 0.8167462348937988, 1.1567931175231934, 0.985456645488739, 0.7719168663024902,
    1.0182983875274658, 1.0909514427185059,
]
PANOHEAD_REFERENCE_ABS_SUM = 362.1185302734375  # both images, all pixels


def test_matches_values_from_the_original_panohead_code():
    """Catches convention slips a shape test cannot: weight flips, noise/bias order, gains, skip upsampling."""
    g = StyleGAN2Backbone(z_dim=5, c_dim=3, w_dim=4, img_resolution=8, img_channels=3,
                          mapping_kwargs=dict(num_layers=2), channel_base=64, channel_max=6)
    _fill_deterministic(g)
    z = torch.linspace(-1, 1, 10).reshape(2, 5)
    c = torch.linspace(0.5, -0.5, 6).reshape(2, 3)
    with torch.no_grad():
        img = g(z, c, truncation_psi=0.7, truncation_cutoff=2, noise_mode="const")
    np.testing.assert_allclose(img[0, :, ::3, ::3].flatten().numpy(), PANOHEAD_REFERENCE_PIXELS, rtol=1e-4, atol=1e-5)
    assert img.abs().sum().item() == pytest.approx(PANOHEAD_REFERENCE_ABS_SUM, rel=1e-5)


# ------------------------------------------------------------------------------------------------------
# PanoHead-size construction (meta device: no memory, no forward)
# ------------------------------------------------------------------------------------------------------
def test_panohead_backbone_names_and_shapes():
    cfg = get_preset("panohead")
    with torch.device("meta"):
        g = build_backbone(cfg)
    assert g.num_ws == cfg.num_ws == 14
    assert cfg.backbone_channels == 288
    assert [synthesis_channels(r, 32768, 512) for r in (4, 64, 128, 256)] == [512, 512, 256, 128]
    shapes = {k: tuple(v.shape) for k, v in g.state_dict().items()}
    expected = {
        "mapping.embed.weight": (512, 25),
        "mapping.embed.bias": (512,),
        "mapping.fc0.weight": (512, 1024),  # z (512) ++ embedded c (512)
        "mapping.fc1.weight": (512, 512),
        "mapping.w_avg": (512,),
        "synthesis.b4.const": (512, 4, 4),
        "synthesis.b4.resample_filter": (4, 4),
        "synthesis.b4.conv1.weight": (512, 512, 3, 3),
        "synthesis.b4.conv1.affine.weight": (512, 512),
        "synthesis.b4.conv1.noise_const": (4, 4),
        "synthesis.b4.torgb.weight": (288, 512, 1, 1),
        "synthesis.b8.conv0.noise_const": (8, 8),
        "synthesis.b8.conv0.noise_strength": (),
        "synthesis.b8.conv0.resample_filter": (4, 4),
        "synthesis.b128.conv0.weight": (256, 512, 3, 3),
        "synthesis.b128.conv0.affine.weight": (512, 512),
        "synthesis.b256.conv0.weight": (128, 256, 3, 3),
        "synthesis.b256.conv0.affine.weight": (256, 512),
        "synthesis.b256.conv0.affine.bias": (256,),
        "synthesis.b256.conv1.weight": (128, 128, 3, 3),
        "synthesis.b256.conv1.bias": (128,),
        "synthesis.b256.conv1.noise_const": (256, 256),
        "synthesis.b256.torgb.weight": (288, 128, 1, 1),
        "synthesis.b256.torgb.affine.weight": (128, 512),
        "synthesis.b256.torgb.bias": (288,),
    }
    for name, shape in expected.items():
        assert shapes.get(name) == shape, name
    assert "synthesis.b4.conv0.weight" not in shapes
    # mapping: embed (2) + fc0/fc1 (4) + w_avg; synthesis: b4 13 entries, b8…b256 19 entries each.
    assert len(shapes) == 7 + 13 + 6 * 19


def test_panohead_superresolution_and_side_networks_names_and_shapes():
    cfg = get_preset("panohead")
    with torch.device("meta"):
        sr = build_superresolution(cfg)
        bcg = build_background_synthesis(cfg, sr.input_resolution)
        t_mapping = build_pose_mapping(cfg)
    assert sr.input_resolution == 128
    shapes = {k: tuple(v.shape) for k, v in sr.state_dict().items()}
    expected = {
        "block0.resample_filter": (4, 4),
        "block0.conv0.weight": (256, 32, 3, 3),
        "block0.conv0.affine.weight": (32, 512),
        "block0.conv0.noise_const": (256, 256),
        "block0.conv1.weight": (256, 256, 3, 3),
        "block0.torgb.weight": (3, 256, 1, 1),
        "block1.conv0.weight": (128, 256, 3, 3),
        "block1.conv1.noise_const": (512, 512),
        "block1.torgb.weight": (3, 128, 1, 1),
        "block1.torgb.bias": (3,),
    }
    for name, shape in expected.items():
        assert shapes.get(name) == shape, name
    assert len(shapes) == 2 * 19 and "resample_filter" not in shapes
    assert sr.block0.use_fp16 and sr.block0.conv0.conv_clamp == 256  # sr_num_fp16_res = 4
    # Background: half channel_base, 128² × 32 features → 12 ws; b128 has min(16384 // 128, 512) = 128 channels.
    assert bcg.num_ws == 12
    assert tuple(bcg.b128.torgb.weight.shape) == (32, 128, 1, 1)
    assert tuple(bcg.b64.conv1.weight.shape) == (256, 256, 3, 3)
    assert tuple(t_mapping.fc0.weight.shape) == (3, 515)


# ------------------------------------------------------------------------------------------------------
# Super-resolution
# ------------------------------------------------------------------------------------------------------
SR_KINDS = [  # (kind, img_resolution, expected input_resolution) on the tiny preset (neural render 32²)
    ("2X", 64, 32),
    ("4X", 128, 64),
    ("8XDC", 256, 64),
    ("none", 32, 32),
]


@pytest.mark.parametrize("kind,img_res,input_res", SR_KINDS)
def test_superresolution_output_shapes(kind, img_res, input_res):
    cfg = TINY.replace(superresolution=kind, img_resolution=img_res)
    torch.manual_seed(0)
    sr = build_superresolution(cfg).eval()
    assert sr.input_resolution == input_res
    render = cfg.rendering.neural_rendering_resolution
    rgb = torch.randn(2, 3, render, render)
    features = torch.randn(2, 32, render, render)
    ws = torch.randn(2, cfg.num_ws, cfg.w_dim)
    with torch.no_grad():
        out = sr(rgb, features, ws)
    assert out.shape == (2, 3, img_res, img_res) and out.dtype == torch.float32
    if kind == "none":
        assert out is rgb
    else:
        assert sr.block0.upsample == (kind == "8XDC")


def test_superresolution_uses_only_last_w_and_is_deterministic_without_noise():
    torch.manual_seed(0)
    sr = build_superresolution(TINY).eval()
    rgb, features = torch.randn(1, 3, 32, 32), torch.randn(1, 32, 32, 32)
    ws = torch.randn(1, TINY.num_ws, TINY.w_dim)
    other = ws.clone()
    other[:, :-1] = torch.randn_like(other[:, :-1])
    with torch.no_grad():
        a = sr(rgb, features, ws)
        b = sr(rgb, features, other)
        other[:, -1] += 1
        c = sr(rgb, features, other)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_superresolution_fp16_setting_is_float32_on_cpu():
    cfg = TINY.replace(sr_num_fp16_res=4)
    sr = build_superresolution(cfg).eval()
    assert sr.block1.use_fp16 and sr.block1.torgb.conv_clamp == 256
    with torch.no_grad():
        out = sr(torch.randn(1, 3, 32, 32), torch.randn(1, 32, 32, 32), torch.randn(1, 2, cfg.w_dim))
    assert out.dtype == torch.float32


def test_superresolution_rejects_unknown_kind():
    with pytest.raises(ConfigError):
        SuperResolution("16X", channels=32, img_resolution=64, sr_channels=(8, 8), w_dim=8)


# ------------------------------------------------------------------------------------------------------
# Decoder
# ------------------------------------------------------------------------------------------------------
def test_decoder_names_shapes_and_hand_computation():
    torch.manual_seed(0)
    dec = OSGDecoder(activation="none")
    assert {k: tuple(v.shape) for k, v in dec.state_dict().items()} == {
        "net.0.weight": (64, 32), "net.0.bias": (64,), "net.2.weight": (33, 64), "net.2.bias": (33,)}
    with torch.no_grad():
        dec.net[0].bias.normal_()
        dec.net[2].bias.normal_()
    feats = torch.randn(2, 3, 5, 32)
    out = dec(feats, torch.randn(2, 5, 3))
    assert out["rgb"].shape == (2, 5, 32) and out["sigma"].shape == (2, 5, 1)
    p = {k: v.detach().numpy() for k, v in dec.state_dict().items()}
    mean = feats.numpy().mean(axis=1)
    hidden = np.logaddexp(0, mean @ (p["net.0.weight"] / math.sqrt(32)).T + p["net.0.bias"])
    raw = hidden @ (p["net.2.weight"] / 8).T + p["net.2.bias"]
    np.testing.assert_allclose(out["sigma"].detach().numpy(), raw[..., :1], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out["rgb"].detach().numpy(), raw[..., 1:], rtol=1e-4, atol=1e-5)
    # Averaging over planes: plane order does not matter.
    torch.testing.assert_close(dec(feats.flip(1), None)["rgb"], out["rgb"])


def test_decoder_activations():
    torch.manual_seed(0)
    none = OSGDecoder(activation="none")
    feats = torch.randn(1, 3, 50, 32) * 10
    raw = none(feats, None)
    for act in ("sigmoid", "lrelu"):
        dec = OSGDecoder(activation=act)
        dec.load_state_dict(none.state_dict())
        out = dec(feats, None)
        torch.testing.assert_close(out["sigma"], raw["sigma"])
        if act == "sigmoid":
            torch.testing.assert_close(out["rgb"], torch.sigmoid(raw["rgb"]) * 1.002 - 0.001)
            assert out["rgb"].min() > -0.001 and out["rgb"].max() < 1.001
        else:
            r = raw["rgb"]
            torch.testing.assert_close(out["rgb"], torch.where(r > 0, r, 0.2 * r) * math.sqrt(2))
    with pytest.raises(ConfigError):
        OSGDecoder(activation="relu6")
    with pytest.raises(InputError):
        none(torch.randn(1, 3, 5, 16), None)


def test_decoder_from_config():
    dec = OSGDecoder.from_config(get_preset("panohead").rendering)
    assert dec.activation == "none" and dec.hidden_dim == 64 and dec.net[2].out_features == 33
