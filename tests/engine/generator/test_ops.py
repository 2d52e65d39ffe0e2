"""Tests for engine.generator.ops against naive float64 reference implementations written here.

The references spell out each definition literally (zero insertion, explicit padding/cropping index by
index, tap-by-tap FIR convolution, per-sample plain convolutions) so that a wrong offset, a flipped kernel
or a misplaced gain in the fast implementation shows up as a value mismatch.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import scipy.signal
import torch
import torch.nn.functional as F

from engine.errors import ConfigError, InputError
from engine.generator import ops

SQRT2 = math.sqrt(2)


# ------------------------------------------------------------------------------------------------------
# Naive references (numpy, float64)
# ------------------------------------------------------------------------------------------------------
def naive_upfirdn2d(x, f, up=(1, 1), down=(1, 1), pad=(0, 0, 0, 0), flip_filter=False, gain=1.0):
    """x: [N, C, H, W]; f: 1-D (applied as its outer product) or 2-D; up/down: (x, y); pad: (x0, x1, y0, y1)."""
    x = np.asarray(x, np.float64)
    f = np.asarray(f, np.float64)
    if f.ndim == 1:
        f = np.outer(f, f)
    (ux, uy), (dx, dy), (px0, px1, py0, py1) = up, down, pad
    n, c, h, w = x.shape
    stuffed = np.zeros((n, c, h * uy, w * ux))
    stuffed[:, :, ::uy, ::ux] = x
    hp, wp = h * uy + py0 + py1, w * ux + px0 + px1
    padded = np.zeros((n, c, hp, wp))
    for i in range(hp):
        for j in range(wp):
            si, sj = i - py0, j - px0
            if 0 <= si < stuffed.shape[2] and 0 <= sj < stuffed.shape[3]:
                padded[:, :, i, j] = stuffed[:, :, si, sj]
    kh, kw = f.shape
    ho, wo = hp - kh + 1, wp - kw + 1
    out = np.zeros((n, c, ho, wo))
    for a in range(kh):
        for b in range(kw):
            # convolution: tap (a, b) of the filter meets pixel (i + kh-1-a, j + kw-1-b); correlation: (i+a, j+b)
            ia, jb = (a, b) if flip_filter else (kh - 1 - a, kw - 1 - b)
            out += f[a, b] * padded[:, :, ia:ia + ho, jb:jb + wo]
    return out[:, :, ::dy, ::dx] * gain


def naive_correlate(x, w, groups=1):
    """Plain grouped 2-D correlation, 'valid' output (what F.conv2d computes)."""
    n, c, h, wd = x.shape
    o, ipg, kh, kw = w.shape
    opg = o // groups
    ho, wo = h - kh + 1, wd - kw + 1
    out = np.zeros((n, o, ho, wo))
    for g in range(groups):
        xs = x[:, g * ipg:(g + 1) * ipg]
        for a in range(kh):
            for b in range(kw):
                patch = xs[:, :, a:a + ho, b:b + wo]  # [N, ipg, ho, wo]
                out[:, g * opg:(g + 1) * opg] += np.einsum("nihw,oi->nohw", patch, w[g * opg:(g + 1) * opg, :, a, b])
    return out


def naive_conv2d_resample(x, w, f, up=1, down=1, padding=(0, 0, 0, 0), groups=1, flip_weight=True, flip_filter=False):
    """Definition: pad-once upfirdn (up, gain up²) → valid conv → filtered downsampling."""
    f2 = np.asarray(f, np.float64)
    fh, fw = (f2.shape[0], f2.shape[-1])
    px0, px1, py0, py1 = padding
    if up > 1:
        px0, px1, py0, py1 = px0 + (fw + up - 1) // 2, px1 + (fw - up) // 2, py0 + (fh + up - 1) // 2, py1 + (fh - up) // 2
    if down > 1:
        px0, px1 = px0 + (fw - down + 1) // 2, px1 + (fw - down) // 2
        py0, py1 = py0 + (fh - down + 1) // 2, py1 + (fh - down) // 2
    pads = (px0, px1, py0, py1)
    if up > 1:
        x = naive_upfirdn2d(x, f, up=(up, up), pad=pads, flip_filter=flip_filter, gain=up * up)
    else:
        x = naive_upfirdn2d(x, [[1.0]], pad=pads)
    w = np.asarray(w, np.float64)
    y = naive_correlate(x, w if flip_weight else w[:, :, ::-1, ::-1], groups)
    if down > 1:
        y = naive_upfirdn2d(y, f, down=(down, down), flip_filter=flip_filter)
    return y


def t64(a):
    return torch.as_tensor(np.asarray(a), dtype=torch.float64)


RNG = np.random.default_rng(1234)
ASYM_2D = RNG.uniform(0.1, 1.0, size=(3, 2))  # asymmetric: catches flips and transposes


# ------------------------------------------------------------------------------------------------------
# setup_filter
# ------------------------------------------------------------------------------------------------------
def test_setup_filter_expands_short_filters_and_normalises():
    f = ops.setup_filter([1, 3, 3, 1])
    expected = np.outer([1, 3, 3, 1], [1, 3, 3, 1]) / 64.0
    assert f.dtype == torch.float32 and f.shape == (4, 4)
    np.testing.assert_allclose(f.numpy(), expected, rtol=1e-7)


def test_setup_filter_separable_threshold_flip_and_gain():
    taps = np.arange(1, 9, dtype=np.float64)
    sep = ops.setup_filter(taps)
    assert sep.ndim == 1 and sep.shape == (8,)
    np.testing.assert_allclose(sep.numpy(), taps / taps.sum(), rtol=1e-6)
    assert ops.setup_filter(taps, separable=False).shape == (8, 8)
    np.testing.assert_allclose(ops.setup_filter(taps, flip_filter=True).numpy(), (taps / taps.sum())[::-1], rtol=1e-6)
    # Gain is split over the two passes of a separable filter: each tap gets sqrt(gain).
    np.testing.assert_allclose(ops.setup_filter(taps, gain=4).numpy(), 2 * taps / taps.sum(), rtol=1e-6)
    np.testing.assert_allclose(ops.setup_filter([1, 1], gain=4).numpy(), np.full((2, 2), 1.0), rtol=1e-6)
    assert ops.setup_filter(None).tolist() == [[1.0]]
    np.testing.assert_allclose(ops.setup_filter([2, 2], normalize=False).numpy(), np.full((2, 2), 4.0))


def test_setup_filter_rejects_bad_input():
    with pytest.raises(ConfigError):
        ops.setup_filter(np.zeros((2, 2, 2)))
    with pytest.raises(ConfigError):
        ops.setup_filter([[1, 2], [3, 4]], separable=True)


# ------------------------------------------------------------------------------------------------------
# upfirdn2d and wrappers
# ------------------------------------------------------------------------------------------------------
FILTERS = {
    "sep8": np.arange(1, 9, dtype=np.float64),  # stays 1-D (separable)
    "tent4": [1, 3, 3, 1],  # expanded to 4×4
    "asym2d": ASYM_2D,
    "short_sep": "short_sep",  # [1, 2, 1] forced separable
    "none": None,
}


def _filter(name):
    if name == "short_sep":
        return ops.setup_filter([1, 2, 1], separable=True), np.array([1, 2, 1]) / 4.0
    spec = FILTERS[name]
    if spec is None:
        return None, np.ones((1, 1))
    f = ops.setup_filter(spec, normalize=name != "asym2d")
    return f, f.double().numpy()


UPFIRDN_CASES = [
    # filter, up, down, padding (x0, x1, y0, y1), flip, gain
    ("tent4", (1, 1), (1, 1), (0, 0, 0, 0), False, 1.0),
    ("tent4", (2, 2), (1, 1), (2, 1, 2, 1), False, 4.0),
    ("tent4", (1, 1), (2, 2), (1, 1, 1, 1), False, 1.0),
    ("tent4", (2, 2), (2, 2), (1, 2, 0, 3), True, 1.0),
    ("sep8", (2, 2), (1, 1), (4, 3, 4, 3), False, 4.0),
    ("sep8", (1, 1), (2, 2), (3, 3, 3, 3), True, 1.0),
    ("sep8", (3, 2), (1, 2), (-1, 5, 2, 4), False, 2.5),
    ("asym2d", (1, 1), (1, 1), (1, 1, 1, 1), False, 1.0),
    ("asym2d", (1, 1), (1, 1), (1, 1, 1, 1), True, 1.0),
    ("asym2d", (2, 3), (1, 1), (0, 1, -1, 2), False, 1.0),
    ("asym2d", (2, 2), (3, 2), (-2, 3, 1, -1), True, 0.5),
    ("short_sep", (2, 2), (1, 1), (1, 0, 1, 0), False, 4.0),
    ("short_sep", (1, 1), (2, 1), (-1, -1, 2, 0), False, 1.0),
    ("none", (2, 2), (1, 1), (0, -1, 1, 0), False, 1.0),
    ("none", (1, 1), (3, 2), (1, 1, 0, 0), False, 3.0),
]


@pytest.mark.parametrize("fname,up,down,pad,flip,gain", UPFIRDN_CASES)
def test_upfirdn2d_matches_naive_reference(fname, up, down, pad, flip, gain):
    x = RNG.standard_normal((2, 3, 7, 6))
    f, f_np = _filter(fname)
    got = ops.upfirdn2d(t64(x), f, up=up, down=down, padding=pad, flip_filter=flip, gain=gain)
    want = naive_upfirdn2d(x, f_np, up=up, down=down, pad=pad, flip_filter=flip, gain=gain)
    assert got.shape == want.shape
    assert got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-6, atol=1e-6)  # filter is float32


def test_upfirdn2d_int_padding_and_tuple_forms_agree():
    x = t64(RNG.standard_normal((1, 2, 5, 5)))
    f = ops.setup_filter([1, 3, 3, 1])
    a = ops.upfirdn2d(x, f, up=2, padding=2)
    b = ops.upfirdn2d(x, f, up=(2, 2), padding=(2, 2))
    c = ops.upfirdn2d(x, f, up=2, padding=(2, 2, 2, 2))
    assert torch.equal(a, b) and torch.equal(a, c)


@pytest.mark.parametrize("up,down", [(1, 1), (2, 1), (3, 1), (1, 2), (2, 3)])
def test_upfirdn2d_rows_match_scipy(up, down):
    """Independent check on one axis: a [1, k] filter with 'full' padding equals scipy.signal.upfirdn."""
    h = RNG.uniform(0.2, 1.0, size=5)
    row = RNG.standard_normal(9)
    f = torch.as_tensor(h[None, :], dtype=torch.float64)
    pad = (len(h) - 1, len(h) - 1 - (up - 1), 0, 0)
    got = ops.upfirdn2d(t64(row[None, None, None, :]), f, up=(up, 1), down=(down, 1), padding=pad)
    want = scipy.signal.upfirdn(h, row, up=up, down=down)
    np.testing.assert_allclose(got[0, 0, 0].numpy(), want, rtol=1e-10, atol=1e-12)


def test_separable_and_full_filters_agree():
    x = t64(RNG.standard_normal((2, 3, 8, 8)))
    sep = ops.setup_filter([1, 3, 3, 1], separable=True)
    full = ops.setup_filter([1, 3, 3, 1], separable=False)
    for kwargs in (dict(up=2, padding=(2, 1)), dict(down=2, padding=1), dict(up=2, down=2, padding=3)):
        torch.testing.assert_close(ops.upfirdn2d(x, sep, **kwargs), ops.upfirdn2d(x, full, **kwargs))


def test_upsample2d_with_box_filter_is_nearest_neighbour():
    x = t64(RNG.standard_normal((2, 3, 4, 5)))
    y = ops.upsample2d(x, ops.setup_filter([1, 1]))
    want = x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    torch.testing.assert_close(y, want)


def test_downsample2d_with_box_filter_is_average_pooling():
    x = t64(RNG.standard_normal((2, 3, 6, 8)))
    torch.testing.assert_close(ops.downsample2d(x, ops.setup_filter([1, 1])), F.avg_pool2d(x, 2))


def test_resampling_wrappers_shapes_and_dc_gain():
    x = torch.ones(1, 2, 8, 8, dtype=torch.float64)
    f = ops.setup_filter([1, 3, 3, 1])
    up = ops.upsample2d(x, f)
    down = ops.downsample2d(x, f)
    same = ops.filter2d(x, f)
    assert up.shape == (1, 2, 16, 16) and down.shape == (1, 2, 4, 4) and same.shape == (1, 2, 8, 8)
    # A DC-normalised filter leaves a constant image constant away from the zero-padded border.
    torch.testing.assert_close(up[..., 2:-2, 2:-2], torch.ones_like(up[..., 2:-2, 2:-2]))
    torch.testing.assert_close(down[..., 1:-1, 1:-1], torch.ones_like(down[..., 1:-1, 1:-1]))
    torch.testing.assert_close(same[..., 2:-2, 2:-2], torch.ones_like(same[..., 2:-2, 2:-2]))
    assert ops.upsample2d(x, f, up=3).shape == (1, 2, 24, 24)
    assert ops.filter2d(x, f, padding=1).shape == (1, 2, 10, 10)


def test_filter2d_is_centred_convolution():
    x = RNG.standard_normal((1, 2, 6, 7))
    k = RNG.uniform(0.1, 1, size=(3, 3))
    got = ops.filter2d(t64(x), torch.as_tensor(k))
    want = naive_upfirdn2d(x, k, pad=(1, 1, 1, 1))
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12)
    torch.testing.assert_close(ops.filter2d(t64(x), None), t64(x))


def test_upfirdn2d_rejects_bad_input():
    f = ops.setup_filter([1, 3, 3, 1])
    with pytest.raises(InputError):
        ops.upfirdn2d(torch.zeros(2, 2, 2), f)
    with pytest.raises(InputError):
        ops.upfirdn2d(torch.zeros(1, 1, 2, 2), f)  # image smaller than the filter
    with pytest.raises(ConfigError):
        ops.upfirdn2d(torch.zeros(1, 1, 8, 8), f, up=0)
    with pytest.raises(ConfigError):
        ops.upfirdn2d(torch.zeros(1, 1, 8, 8), f, padding=(1, 2, 3))


def test_upfirdn2d_gradcheck():
    f2 = torch.as_tensor(ASYM_2D)
    x = torch.randn(1, 2, 4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: ops.upfirdn2d(t, f2, up=2, padding=(1, 0, 2, -1)), (x,))
    sep = ops.setup_filter(np.arange(1, 9)).double()
    assert torch.autograd.gradcheck(lambda t: ops.upfirdn2d(t, sep, down=2, padding=3, gain=2), (x,))
    assert torch.autograd.gradgradcheck(lambda t: ops.upsample2d(t, ops.setup_filter([1, 3, 3, 1])), (x,),
                                        fast_mode=True)


# ------------------------------------------------------------------------------------------------------
# bias_act
# ------------------------------------------------------------------------------------------------------
def test_activation_default_gains():
    expected = {"linear": 1, "relu": SQRT2, "lrelu": SQRT2, "tanh": 1, "sigmoid": 1, "elu": 1, "selu": 1,
                "softplus": 1, "swish": SQRT2}
    assert set(ops.ACTIVATIONS) == set(expected)
    for name, gain in expected.items():
        assert ops.activation_gain(name) == pytest.approx(gain)


def test_bias_act_hand_values():
    x = torch.tensor([-2.0, -0.5, 0.0, 1.0, 3.0], dtype=torch.float64)
    lrelu = ops.bias_act(x, act="lrelu")
    np.testing.assert_allclose(lrelu.numpy(), np.array([-0.4, -0.1, 0.0, 1.0, 3.0]) * SQRT2)
    # Clamp is applied after the gain: 3·√2 ≈ 4.24 → 2, -0.4·√2 ≈ -0.57 untouched.
    clamped = ops.bias_act(x, act="lrelu", clamp=2.0)
    np.testing.assert_allclose(clamped.numpy(), [-0.4 * SQRT2, -0.1 * SQRT2, 0.0, SQRT2, 2.0])
    np.testing.assert_allclose(ops.bias_act(x, act="lrelu", alpha=0.5, gain=1).numpy(), [-1.0, -0.25, 0, 1, 3])
    np.testing.assert_allclose(ops.bias_act(x, act="relu").numpy(), np.array([0, 0, 0, 1, 3.0]) * SQRT2)
    np.testing.assert_allclose(ops.bias_act(x, clamp=0.75).numpy(), [-0.75, -0.5, 0, 0.75, 0.75])


@pytest.mark.parametrize("act", ["linear", "relu", "lrelu", "tanh", "sigmoid", "elu", "selu", "softplus", "swish"])
def test_bias_act_formulas_with_bias_on_any_dim(act):
    x = RNG.standard_normal((2, 3, 4))
    b = RNG.standard_normal(4)
    v = x + b[None, None, :]
    formulas = {
        "linear": v, "relu": np.maximum(v, 0) * SQRT2, "lrelu": np.where(v > 0, v, 0.2 * v) * SQRT2,
        "tanh": np.tanh(v), "sigmoid": 1 / (1 + np.exp(-v)),
        "elu": np.where(v > 0, v, np.expm1(v)),
        "selu": 1.0507009873554805 * np.where(v > 0, v, 1.6732632423543772 * np.expm1(v)),
        "softplus": np.log1p(np.exp(v)), "swish": v / (1 + np.exp(-v)) * SQRT2,
    }
    got = ops.bias_act(t64(x), t64(b), dim=2, act=act)
    np.testing.assert_allclose(got.numpy(), formulas[act], rtol=1e-10, atol=1e-12)


def test_bias_act_rejects_bad_arguments():
    x = torch.zeros(2, 3)
    with pytest.raises(ConfigError):
        ops.bias_act(x, act="gelu-ish")
    with pytest.raises(InputError):
        ops.bias_act(x, torch.zeros(4))
    with pytest.raises(ConfigError):
        ops.bias_act(x, clamp=-1)


def test_bias_act_gradcheck():
    x = (torch.rand(2, 3, 4, dtype=torch.float64) + 0.1) * torch.tensor([1.0, -1.0, 1.0, -1.0], dtype=torch.float64)
    b = torch.full([3], 0.05, dtype=torch.float64, requires_grad=True)
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t, bb: ops.bias_act(t, bb, act="lrelu", clamp=5.0), (x, b))
    assert torch.autograd.gradcheck(lambda t, bb: ops.bias_act(t, bb, act="swish"), (x, b))


# ------------------------------------------------------------------------------------------------------
# conv2d_resample
# ------------------------------------------------------------------------------------------------------
CONV_CASES = list(itertools.product(
    [3, 1],  # kernel size
    [(1, 1), (2, 1), (1, 2), (2, 2)],  # (up, down)
    [(1, 1, 1, 1), (0, 0, 0, 0), (1, 0, 2, 1)],  # padding
    [1, 2],  # groups
    [True, False],  # flip_weight
))


@pytest.mark.parametrize("k,updown,pad,groups,flip_weight", CONV_CASES)
def test_conv2d_resample_matches_naive_reference(k, updown, pad, groups, flip_weight):
    up, down = updown
    rng = np.random.default_rng(hash((k, updown, pad, groups, flip_weight)) % 2 ** 32)
    x = rng.standard_normal((2, 4, 6, 6))
    w = rng.standard_normal((6, 4 // groups, k, k))
    f_np = ASYM_2D if (k == 3 and groups == 2) else ops.setup_filter([1, 3, 3, 1]).double().numpy()
    flip_filter = groups == 2 and flip_weight
    got = ops.conv2d_resample(t64(x), t64(w), f=torch.as_tensor(f_np), up=up, down=down, padding=pad,
                              groups=groups, flip_weight=flip_weight, flip_filter=flip_filter)
    want = naive_conv2d_resample(x, w, f_np, up=up, down=down, padding=pad, groups=groups,
                                 flip_weight=flip_weight, flip_filter=flip_filter)
    assert got.shape == want.shape
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-9, atol=1e-9)


def test_conv2d_resample_same_padding_shapes():
    f = ops.setup_filter([1, 3, 3, 1])
    x = torch.randn(1, 4, 8, 8)
    w = torch.randn(5, 4, 3, 3)
    assert ops.conv2d_resample(x, w, f, padding=1).shape == (1, 5, 8, 8)
    assert ops.conv2d_resample(x, w, f, up=2, padding=1).shape == (1, 5, 16, 16)
    assert ops.conv2d_resample(x, w, f, down=2, padding=1).shape == (1, 5, 4, 4)
    with pytest.raises(InputError):
        ops.conv2d_resample(x, torch.randn(5, 3, 3, 3))


def test_conv2d_resample_gradcheck():
    f = ops.setup_filter([1, 3, 3, 1]).double()
    x = torch.randn(1, 4, 4, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda a, b: ops.conv2d_resample(a, b, f, up=2, padding=1, groups=2, flip_weight=False), (x, w),
        fast_mode=True)
    assert torch.autograd.gradcheck(lambda a, b: ops.conv2d_resample(a, b, f, down=2, padding=1, groups=2), (x, w),
                                    fast_mode=True)


# ------------------------------------------------------------------------------------------------------
# modulated_conv2d
# ------------------------------------------------------------------------------------------------------
def loop_modulated_conv(x, weight, styles, noise, demodulate, up, f, padding, flip_weight):
    """One plain convolution per sample with its own modulated (and demodulated) weight."""
    outs = []
    for i in range(x.shape[0]):
        w = weight * styles[i][None, :, None, None]
        if demodulate:
            w = w / np.sqrt((w ** 2).sum(axis=(1, 2, 3), keepdims=True) + 1e-8)
        if up == 1:
            xi = torch.as_tensor(x[i:i + 1])
            y = F.conv2d(xi, torch.as_tensor(w if flip_weight else w[:, :, ::-1, ::-1].copy()), padding=padding).numpy()
        else:
            pad = (padding,) * 4
            y = naive_conv2d_resample(x[i:i + 1], w, f, up=up, padding=pad, flip_weight=flip_weight)
        outs.append(y)
    out = np.concatenate(outs)
    return out if noise is None else out + noise


@pytest.mark.parametrize("up,demodulate,flip_weight", [(1, True, True), (1, False, True), (2, True, False),
                                                       (2, False, True)])
def test_modulated_conv2d_matches_per_sample_loop(up, demodulate, flip_weight):
    rng = np.random.default_rng(7 + up + 2 * demodulate)
    x = rng.standard_normal((3, 4, 5, 5))
    weight = rng.standard_normal((6, 4, 3, 3))
    styles = rng.standard_normal((3, 4))
    noise = rng.standard_normal((3, 1, 5 * up, 5 * up))
    f = ops.setup_filter([1, 3, 3, 1]).double()
    want = loop_modulated_conv(x, weight, styles, noise, demodulate, up, f.numpy(), 1, flip_weight)
    for fused in (True, False):
        got = ops.modulated_conv2d(t64(x), t64(weight), t64(styles), noise=t64(noise), up=up, padding=1,
                                   resample_filter=f, demodulate=demodulate, flip_weight=flip_weight,
                                   fused_modconv=fused)
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-9, atol=1e-9)


def test_demodulation_removes_style_scale():
    x = torch.randn(2, 4, 6, 6, dtype=torch.float64)
    w = torch.randn(3, 4, 3, 3, dtype=torch.float64)
    s = torch.randn(2, 4, dtype=torch.float64)
    a = ops.modulated_conv2d(x, w, s, padding=1)
    b = ops.modulated_conv2d(x, w, s * torch.tensor([[5.0], [0.3]], dtype=torch.float64), padding=1)
    torch.testing.assert_close(a, b)


def test_modulated_conv2d_fp16_prenormalisation_keeps_result():
    torch.manual_seed(0)
    x = torch.randn(2, 8, 6, 6)
    w = torch.randn(4, 8, 3, 3) * 300  # large enough that unnormalised fp16 products would lose precision
    s = torch.randn(2, 8) * 300
    ref = ops.modulated_conv2d(x, w, s, padding=1)
    half = ops.modulated_conv2d(x.half(), w, s, padding=1)
    assert half.dtype == torch.float16
    torch.testing.assert_close(half.float(), ref, rtol=2e-2, atol=2e-2)


def test_modulated_conv2d_rejects_mismatched_styles():
    with pytest.raises(InputError):
        ops.modulated_conv2d(torch.zeros(2, 4, 5, 5), torch.zeros(3, 4, 3, 3), torch.zeros(2, 5))


def test_modulated_conv2d_gradcheck():
    f = ops.setup_filter([1, 3, 3, 1]).double()
    x = torch.randn(2, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    s = torch.randn(2, 2, dtype=torch.float64, requires_grad=True)
    for fused in (True, False):
        assert torch.autograd.gradcheck(
            lambda a, b, c: ops.modulated_conv2d(a, b, c, up=2, padding=1, resample_filter=f, flip_weight=False,
                                                 fused_modconv=fused), (x, w, s), fast_mode=True)


# ------------------------------------------------------------------------------------------------------
# filtered_lrelu
# ------------------------------------------------------------------------------------------------------
def naive_filtered_lrelu(x, fu, fd, b, up, down, pad, gain, slope, clamp):
    x = x + b[None, :, None, None]
    x = naive_upfirdn2d(x, fu, up=(up, up), pad=pad, gain=up * up)
    x = np.where(x > 0, x, slope * x) * gain
    if clamp is not None:
        x = np.clip(x, -clamp, clamp)
    return naive_upfirdn2d(x, fd, down=(down, down))


@pytest.mark.parametrize("up,down,pad,clamp", [(2, 2, (5, 5, 5, 5), None), (2, 1, (3, 4, 2, 1), 0.5),
                                               (1, 2, (4, 3, 4, 3), 1.0), (1, 1, (3, 4, 3, 4), None)])
def test_filtered_lrelu_matches_naive_chain(up, down, pad, clamp):
    rng = np.random.default_rng(up * 10 + down)
    x = rng.standard_normal((2, 3, 6, 5))
    b = rng.standard_normal(3)
    fu = ops.setup_filter(np.hanning(10)[1:-1]).double()  # 8-tap separable
    fd = ops.setup_filter([1, 3, 3, 1]).double()
    got = ops.filtered_lrelu(t64(x), fu, fd, t64(b), up=up, down=down, padding=pad, clamp=clamp)
    want = naive_filtered_lrelu(x, fu.numpy(), fd.numpy(), b, up, down, pad, SQRT2, 0.2, clamp)
    assert got.shape == want.shape
    n_fu, n_fd = 8, 4
    assert got.shape[-1] == (5 * up + pad[0] + pad[1] - (n_fu - 1) - (n_fd - 1) + down - 1) // down
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-6, atol=1e-6)


def test_filtered_lrelu_without_filters_is_bias_lrelu_clamp():
    x = torch.randn(1, 2, 4, 4, dtype=torch.float64)
    b = torch.tensor([0.5, -0.5], dtype=torch.float64)
    got = ops.filtered_lrelu(x, b=b, gain=1.5, slope=0.1, clamp=0.8)
    v = x + b[None, :, None, None]
    torch.testing.assert_close(got, (torch.where(v > 0, v, 0.1 * v) * 1.5).clamp(-0.8, 0.8))


def test_filtered_lrelu_gradcheck():
    fu = ops.setup_filter([1, 3, 3, 1]).double()
    x = torch.randn(1, 2, 4, 4, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, c: ops.filtered_lrelu(a, fu, fu, c, up=2, down=2, padding=3), (x, b))


# ------------------------------------------------------------------------------------------------------
# CUDA (runs only where a GPU is present)
# ------------------------------------------------------------------------------------------------------
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_ops_agree_on_cpu_and_cuda():
    torch.manual_seed(0)
    f = ops.setup_filter([1, 3, 3, 1])
    x, w, s = torch.randn(2, 4, 8, 8), torch.randn(6, 4, 3, 3), torch.randn(2, 4)
    noise = torch.randn(2, 1, 16, 16)
    cases = [
        lambda d: ops.upfirdn2d(x.to(d), f.to(d), up=2, down=1, padding=(2, 1, 1, 2)),
        lambda d: ops.downsample2d(x.to(d), f.to(d)),
        lambda d: ops.conv2d_resample(x.to(d), w.to(d), f.to(d), up=2, padding=1, flip_weight=False),
        lambda d: ops.modulated_conv2d(x.to(d), w.to(d), s.to(d), noise=noise.to(d), up=2, padding=1,
                                       resample_filter=f.to(d), flip_weight=False),
        lambda d: ops.filtered_lrelu(x.to(d), f.to(d), f.to(d), up=2, down=2, padding=3, clamp=1.0),
    ]
    for run in cases:
        torch.testing.assert_close(run("cuda").cpu(), run("cpu"), rtol=1e-3, atol=1e-3)
