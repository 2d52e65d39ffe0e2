"""Pure-PyTorch versions of the StyleGAN2/3 low-level ops PanoHead is built on.

PanoHead ships these as custom CUDA kernels that have to be compiled on the user's machine; a Blender add-on
cannot rely on a compiler, so everything here is written with stock ``conv2d`` / ``conv_transpose2d`` calls.
The numerical conventions (where the zero-stuffing happens, which side gets the extra padding, when the
weight is flipped, default activation gains) are exactly those of the original ops, because the published
weights were trained with them: a one-pixel shift or a flipped kernel would silently degrade the output.

Conventions shared by every function:

* images are ``[N, C, H, W]``; padding is ``int``, ``(x, y)`` or ``(x0, x1, y0, y1)``, negative = crop;
* a FIR filter is ``[taps]`` (separable: applied along x, then y) or ``[height, width]``;
* ``flip_filter=False`` means true convolution with the filter, ``True`` means correlation;
* ``flip_weight=True`` means correlation with the conv weight (what ``torch.nn.functional.conv2d`` does).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError, InputError

Padding = Union[int, Sequence[int]]
Factor = Union[int, Sequence[int]]

__all__ = [
    "ACTIVATIONS",
    "activation_gain",
    "setup_filter",
    "upfirdn2d",
    "filter2d",
    "upsample2d",
    "downsample2d",
    "bias_act",
    "conv2d_resample",
    "modulated_conv2d",
    "filtered_lrelu",
]


# ------------------------------------------------------------------------------------------------------
# Argument parsing
# ------------------------------------------------------------------------------------------------------
def _factor_xy(value: Factor, name: str) -> tuple[int, int]:
    """Turn an int or ``(x, y)`` resampling factor into two positive ints."""
    if isinstance(value, (int, np.integer)):
        value = (int(value), int(value))
    if len(value) != 2 or not all(isinstance(v, (int, np.integer)) and v >= 1 for v in value):
        raise ConfigError(f"{name} must be a positive int or a pair of positive ints, got {value!r}")
    return int(value[0]), int(value[1])


def _padding_4(padding: Padding) -> tuple[int, int, int, int]:
    """Turn ``p``, ``(px, py)`` or ``(px0, px1, py0, py1)`` into ``(px0, px1, py0, py1)``."""
    if isinstance(padding, (int, np.integer)):
        padding = (int(padding), int(padding))
    padding = tuple(int(p) for p in padding)
    if len(padding) == 2:
        return padding[0], padding[0], padding[1], padding[1]
    if len(padding) == 4:
        return padding  # type: ignore[return-value]
    raise ConfigError(f"padding must be an int, (x, y) or (x0, x1, y0, y1), got {padding!r}")


def _filter_size(f: torch.Tensor | None) -> tuple[int, int]:
    """(width, height) of a filter; a 1-D filter is square once applied separably."""
    if f is None:
        return 1, 1
    if not isinstance(f, torch.Tensor) or f.ndim not in (1, 2):
        raise InputError(f"FIR filter must be a 1-D or 2-D tensor, got {type(f).__name__} "
                         f"with shape {getattr(f, 'shape', None)}")
    return int(f.shape[-1]), int(f.shape[0])


def _require_images(x: torch.Tensor, name: str) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        raise InputError(f"{name} must be a [N, C, H, W] tensor, got shape {getattr(x, 'shape', None)}")


# ------------------------------------------------------------------------------------------------------
# FIR filters
# ------------------------------------------------------------------------------------------------------
def setup_filter(
    f,
    normalize: bool = True,
    flip_filter: bool = False,
    gain: float = 1,
    separable: bool | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Build the float32 FIR filter tensor that :func:`upfirdn2d` expects.

    ``f`` may be a list, array or tensor of taps (1-D), a 2-D kernel, a scalar, or ``None`` (identity).
    A 1-D filter stays separable only when it has at least 8 taps (``separable=None``); short ones are
    expanded to their outer product, which is what the original does and what the checkpoints' stored
    ``resample_filter`` buffers look like (``[1, 3, 3, 1]`` becomes a normalised 4×4 kernel).
    """
    taps = torch.as_tensor(1.0 if f is None else f, dtype=torch.float32)
    if taps.numel() == 0 or taps.ndim > 2:
        raise ConfigError(f"setup_filter: filter must be a non-empty scalar, 1-D or 2-D array, got shape {tuple(taps.shape)}")
    taps = taps.reshape(1) if taps.ndim == 0 else taps.clone()
    if separable is None:
        separable = taps.ndim == 1 and taps.numel() >= 8
    if taps.ndim == 1 and not separable:
        taps = torch.outer(taps, taps)
    if separable and taps.ndim != 1:
        raise ConfigError("setup_filter: a 2-D filter cannot be made separable")
    if normalize:
        taps = taps / taps.sum()
    if flip_filter:
        taps = taps.flip(list(range(taps.ndim)))
    taps = taps * (gain ** (taps.ndim / 2))
    return taps if device is None else taps.to(device)


def _window(x: torch.Tensor, y0: int, height: int, x0: int, width: int) -> torch.Tensor:
    """``x[..., y0:y0+height, x0:x0+width]`` where indices outside the image read as zero."""
    h, w = x.shape[-2:]
    pad_top, pad_left = max(-y0, 0), max(-x0, 0)
    pad_bottom, pad_right = max(y0 + height - h, 0), max(x0 + width - w, 0)
    if pad_top or pad_bottom or pad_left or pad_right:
        x = F.pad(x, [pad_left, pad_right, pad_top, pad_bottom])
    y0, x0 = y0 + pad_top, x0 + pad_left
    return x[..., y0:y0 + height, x0:x0 + width]


def _depthwise(kernel: torch.Tensor, channels: int) -> torch.Tensor:
    """The same 2-D kernel for every channel, as a grouped-conv weight ``[C, 1, kh, kw]``."""
    return kernel[None, None].expand(channels, 1, *kernel.shape)


def _fir_2d(
    x: torch.Tensor,
    kernel: torch.Tensor,
    up: tuple[int, int],
    down: tuple[int, int],
    pad: tuple[int, int, int, int],
    flip_filter: bool,
) -> torch.Tensor:
    """Zero-stuff by ``up``, pad, convolve every channel with one 2-D kernel, keep every ``down``-th pixel.

    ``up``/``down`` are (y, x); ``pad`` is (y0, y1, x0, x1). Upsampling never materialises the
    zero-stuffed image: a strided transposed convolution computes the same sums directly. Downsampling
    without upsampling uses a strided convolution so discarded pixels are never computed.
    """
    n, c, h, w = x.shape
    kh, kw = kernel.shape
    (uy, ux), (dy, dx), (py0, py1, px0, px1) = up, down, pad
    out_h = h * uy + py0 + py1 - kh + 1
    out_w = w * ux + px0 + px1 - kw + 1
    if out_h < 1 or out_w < 1:
        raise InputError(
            f"upfirdn2d: a {h}x{w} image upsampled by ({ux}, {uy}) with padding {(px0, px1, py0, py1)} "
            f"is smaller than the {kh}x{kw} filter"
        )
    kernel = kernel.to(device=x.device, dtype=x.dtype)

    if uy == 1 and ux == 1:
        # conv2d correlates, so a true convolution needs the flipped kernel.
        weight = _depthwise(kernel if flip_filter else kernel.flip([0, 1]), c)
        x = _window(x, -py0, h + py0 + py1, -px0, w + px0 + px1)
        return F.conv2d(x, weight, stride=(dy, dx), groups=c)

    # conv_transpose2d == true convolution of the zero-stuffed image ("full" output, no padding). Output
    # pixel i of the padded-and-filtered image equals pixel i + (k - 1 - pad0) of that full result.
    weight = _depthwise(kernel.flip([0, 1]) if flip_filter else kernel, c)
    full = F.conv_transpose2d(x, weight, stride=(uy, ux), groups=c)
    y = _window(full, kh - 1 - py0, out_h, kw - 1 - px0, out_w)
    if dy > 1 or dx > 1:
        y = y[:, :, ::dy, ::dx]
    return y


def upfirdn2d(
    x: torch.Tensor,
    f: torch.Tensor | None,
    up: Factor = 1,
    down: Factor = 1,
    padding: Padding = 0,
    flip_filter: bool = False,
    gain: float = 1,
) -> torch.Tensor:
    """Upsample (zero insertion), pad, FIR-filter and downsample every channel of ``x``.

    The sequence is: insert ``up-1`` zeros after each pixel; pad (negative = crop) with respect to that
    upsampled image; convolve with ``f`` keeping only outputs whose footprint lies fully inside the padded
    image; keep every ``down``-th pixel. ``gain`` scales the result. Differentiable to any order.
    """
    _require_images(x, "upfirdn2d: x")
    ux, uy = _factor_xy(up, "upfirdn2d: up")
    dx, dy = _factor_xy(down, "upfirdn2d: down")
    px0, px1, py0, py1 = _padding_4(padding)
    _filter_size(f)
    if f is None:
        f = torch.ones([1, 1], dtype=torch.float32, device=x.device)

    if f.ndim == 2:
        return _fir_2d(x, f * gain, (uy, ux), (dy, dx), (py0, py1, px0, px1), flip_filter)

    # Separable: one pass along x, one along y (the gain rides on the second).
    x = _fir_2d(x, f[None, :], (1, ux), (1, dx), (0, 0, px0, px1), flip_filter)
    return _fir_2d(x, f[:, None] * gain, (uy, 1), (dy, 1), (py0, py1, 0, 0), flip_filter)


def filter2d(x: torch.Tensor, f: torch.Tensor | None, padding: Padding = 0, flip_filter: bool = False,
             gain: float = 1) -> torch.Tensor:
    """Filter without resampling; padded so that the output has the input's size (plus ``padding``)."""
    px0, px1, py0, py1 = _padding_4(padding)
    fw, fh = _filter_size(f)
    pad = [px0 + fw // 2, px1 + (fw - 1) // 2, py0 + fh // 2, py1 + (fh - 1) // 2]
    return upfirdn2d(x, f, padding=pad, flip_filter=flip_filter, gain=gain)


def upsample2d(x: torch.Tensor, f: torch.Tensor | None, up: Factor = 2, padding: Padding = 0,
               flip_filter: bool = False, gain: float = 1) -> torch.Tensor:
    """Upsample by ``up`` with an interpolation filter; output is exactly ``up`` times the input size.

    The extra ``up_x * up_y`` gain compensates for the energy lost to the inserted zeros, so a constant
    image stays constant (away from the border) for a DC-normalised filter.
    """
    ux, uy = _factor_xy(up, "upsample2d: up")
    px0, px1, py0, py1 = _padding_4(padding)
    fw, fh = _filter_size(f)
    pad = [px0 + (fw + ux - 1) // 2, px1 + (fw - ux) // 2, py0 + (fh + uy - 1) // 2, py1 + (fh - uy) // 2]
    return upfirdn2d(x, f, up=(ux, uy), padding=pad, flip_filter=flip_filter, gain=gain * ux * uy)


def downsample2d(x: torch.Tensor, f: torch.Tensor | None, down: Factor = 2, padding: Padding = 0,
                 flip_filter: bool = False, gain: float = 1) -> torch.Tensor:
    """Low-pass filter and downsample by ``down``; output is the input size divided by ``down``."""
    dx, dy = _factor_xy(down, "downsample2d: down")
    px0, px1, py0, py1 = _padding_4(padding)
    fw, fh = _filter_size(f)
    pad = [px0 + (fw - dx + 1) // 2, px1 + (fw - dx) // 2, py0 + (fh - dy + 1) // 2, py1 + (fh - dy) // 2]
    return upfirdn2d(x, f, down=(dx, dy), padding=pad, flip_filter=flip_filter, gain=gain)


# ------------------------------------------------------------------------------------------------------
# Bias + activation
# ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Activation:
    """An activation function with StyleGAN's default shape parameter and output gain.

    The gains (√2 for the ReLU family and swish) keep activations at unit variance through deep stacks;
    trained weights assume them, so layers must use these defaults unless the original overrides them.
    """

    fn: Callable[[torch.Tensor, float], torch.Tensor]
    default_alpha: float
    default_gain: float


_SQRT2 = float(np.sqrt(2))

ACTIVATIONS: dict[str, Activation] = {
    "linear": Activation(lambda x, a: x, 0.0, 1.0),
    "relu": Activation(lambda x, a: F.relu(x), 0.0, _SQRT2),
    "lrelu": Activation(lambda x, a: F.leaky_relu(x, a), 0.2, _SQRT2),
    "tanh": Activation(lambda x, a: torch.tanh(x), 0.0, 1.0),
    "sigmoid": Activation(lambda x, a: torch.sigmoid(x), 0.0, 1.0),
    "elu": Activation(lambda x, a: F.elu(x), 0.0, 1.0),
    "selu": Activation(lambda x, a: F.selu(x), 0.0, 1.0),
    "softplus": Activation(lambda x, a: F.softplus(x), 0.0, 1.0),
    "swish": Activation(lambda x, a: torch.sigmoid(x) * x, 0.0, _SQRT2),
}


def _activation(name: str) -> Activation:
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ConfigError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}") from None


def activation_gain(name: str) -> float:
    """Default output gain of activation ``name`` (what layers multiply by when no gain is given)."""
    return _activation(name).default_gain


def bias_act(
    x: torch.Tensor,
    b: torch.Tensor | None = None,
    dim: int = 1,
    act: str = "linear",
    alpha: float | None = None,
    gain: float | None = None,
    clamp: float | None = None,
) -> torch.Tensor:
    """``clamp(act(x + b) * gain, -clamp, clamp)``; ``b`` runs along dimension ``dim`` of ``x``.

    ``alpha``/``gain`` default to the activation's StyleGAN defaults (see :data:`ACTIVATIONS`).
    """
    spec = _activation(act)
    if clamp is not None and clamp < 0:
        raise ConfigError(f"bias_act: clamp must be >= 0 or None, got {clamp}")
    alpha = float(spec.default_alpha if alpha is None else alpha)
    gain = float(spec.default_gain if gain is None else gain)
    if b is not None:
        if not 0 <= dim < x.ndim:
            raise InputError(f"bias_act: dim {dim} is out of range for a {x.ndim}-D input")
        if b.ndim != 1 or b.shape[0] != x.shape[dim]:
            raise InputError(f"bias_act: bias of shape {tuple(b.shape)} does not match dimension {dim} "
                             f"(size {x.shape[dim]}) of x")
        x = x + b.reshape([-1 if i == dim else 1 for i in range(x.ndim)])
    x = spec.fn(x, alpha)
    if gain != 1:
        x = x * gain
    if clamp is not None:
        x = x.clamp(-clamp, clamp)
    return x


# ------------------------------------------------------------------------------------------------------
# Convolution with resampling
# ------------------------------------------------------------------------------------------------------
def _conv(x: torch.Tensor, w: torch.Tensor, *, stride: int = 1, padding: Sequence[int] = (0, 0),
          groups: int = 1, flip_weight: bool = True) -> torch.Tensor:
    """conv2d that can also do true convolution (``flip_weight=False``)."""
    if not flip_weight:
        w = w.flip([2, 3])
    return F.conv2d(x, w, stride=stride, padding=tuple(padding), groups=groups)


def _weight_for_transpose(w: torch.Tensor, groups: int) -> torch.Tensor:
    """Rearrange a ``[O, I/g, kh, kw]`` conv2d weight into conv_transpose2d's ``[I, O/g, kh, kw]`` layout."""
    out_c, in_per_group, kh, kw = w.shape
    w = w.reshape(groups, out_c // groups, in_per_group, kh, kw).transpose(1, 2)
    return w.reshape(groups * in_per_group, out_c // groups, kh, kw)


def conv2d_resample(
    x: torch.Tensor,
    w: torch.Tensor,
    f: torch.Tensor | None = None,
    up: int = 1,
    down: int = 1,
    padding: Padding = 0,
    groups: int = 1,
    flip_weight: bool = True,
    flip_filter: bool = False,
) -> torch.Tensor:
    """2-D convolution fused with FIR upsampling and/or downsampling.

    Meaning (the slow definition): ``upfirdn2d(x, f, up, padding', gain=up**2)`` → ``conv2d(w)`` with no
    padding → ``upfirdn2d(f, down)``, where ``padding'`` is ``padding`` plus what :func:`upsample2d` and
    :func:`downsample2d` would add, so that a 3×3 conv with ``padding=1`` maps H to ``H*up/down``.
    ``padding`` is applied once, with respect to the upsampled image. The implementation picks an
    equivalent cheaper order (strided conv for downsampling, transposed conv for upsampling).
    """
    _require_images(x, "conv2d_resample: x")
    if not isinstance(w, torch.Tensor) or w.ndim != 4:
        raise InputError(f"conv2d_resample: weight must be [O, I/groups, kh, kw], got {getattr(w, 'shape', None)}")
    if not (isinstance(up, int) and up >= 1 and isinstance(down, int) and down >= 1 and groups >= 1):
        raise ConfigError(f"conv2d_resample: up/down/groups must be positive ints, got {up}, {down}, {groups}")
    if x.shape[1] != w.shape[1] * groups or w.shape[0] % groups:
        raise InputError(f"conv2d_resample: input has {x.shape[1]} channels but weight {tuple(w.shape)} "
                         f"with {groups} group(s) expects {w.shape[1] * groups}")
    w = w.to(x.dtype)
    out_c, in_per_group, kh, kw = w.shape
    fw, fh = _filter_size(f)
    px0, px1, py0, py1 = _padding_4(padding)
    if up > 1:
        px0, px1 = px0 + (fw + up - 1) // 2, px1 + (fw - up) // 2
        py0, py1 = py0 + (fh + up - 1) // 2, py1 + (fh - up) // 2
    if down > 1:
        px0, px1 = px0 + (fw - down + 1) // 2, px1 + (fw - down) // 2
        py0, py1 = py0 + (fh - down + 1) // 2, py1 + (fh - down) // 2
    pad = [px0, px1, py0, py1]
    pointwise = kh == 1 and kw == 1

    if up == 1 and down > 1:
        if pointwise:  # a 1×1 conv commutes with per-channel filtering: shrink first, then mix channels
            x = upfirdn2d(x, f, down=down, padding=pad, flip_filter=flip_filter)
            return _conv(x, w, groups=groups, flip_weight=flip_weight)
        x = upfirdn2d(x, f, padding=pad, flip_filter=flip_filter)
        return _conv(x, w, stride=down, groups=groups, flip_weight=flip_weight)

    if up > 1 and down == 1 and pointwise:  # mix channels at low resolution, then upsample
        x = _conv(x, w, groups=groups, flip_weight=flip_weight)
        return upfirdn2d(x, f, up=up, padding=pad, gain=up ** 2, flip_filter=flip_filter)

    if up > 1:
        # Transposed strided conv = conv on the zero-stuffed image. It produces a "full" result, so the
        # padding left for the FIR filter shrinks by the kernel extent; whatever crop both sides share is
        # done by conv_transpose2d's own padding argument, the rest by the filter's (possibly negative) pad.
        px0, px1 = px0 - (kw - 1), px1 - (kw - up)
        py0, py1 = py0 - (kh - 1), py1 - (kh - up)
        crop_x, crop_y = max(min(-px0, -px1), 0), max(min(-py0, -py1), 0)
        wt = _weight_for_transpose(w, groups)
        if flip_weight:  # conv_transpose2d convolves; correlation needs the flipped kernel
            wt = wt.flip([2, 3])
        x = F.conv_transpose2d(x, wt, stride=up, padding=(crop_y, crop_x), groups=groups)
        x = upfirdn2d(x, f, padding=[px0 + crop_x, px1 + crop_x, py0 + crop_y, py1 + crop_y],
                      gain=up ** 2, flip_filter=flip_filter)
        if down > 1:
            x = upfirdn2d(x, f, down=down, flip_filter=flip_filter)
        return x

    # No resampling.
    if px0 == px1 and py0 == py1 and px0 >= 0 and py0 >= 0:
        return _conv(x, w, padding=(py0, px0), groups=groups, flip_weight=flip_weight)
    x = upfirdn2d(x, None, padding=pad)
    return _conv(x, w, groups=groups, flip_weight=flip_weight)


def modulated_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    styles: torch.Tensor,
    noise: torch.Tensor | None = None,
    up: int = 1,
    down: int = 1,
    padding: Padding = 0,
    resample_filter: torch.Tensor | None = None,
    demodulate: bool = True,
    flip_weight: bool = True,
    fused_modconv: bool = True,
) -> torch.Tensor:
    """StyleGAN2 modulated convolution: per-sample input-channel scaling of the weight by ``styles``,
    optional demodulation to unit output norm, then :func:`conv2d_resample`, then ``+ noise``.

    ``fused_modconv=True`` builds one weight per sample and runs a single grouped conv (fast at inference);
    ``False`` scales the activations instead and shares one weight (faster to train at small batch).
    Both give the same result. ``noise`` is added after demodulation (broadcast to the output).
    """
    _require_images(x, "modulated_conv2d: x")
    batch = x.shape[0]
    out_c, in_c, kh, kw = weight.shape
    if x.shape[1] != in_c or styles.shape != (batch, in_c):
        raise InputError(f"modulated_conv2d: x {tuple(x.shape)}, weight {tuple(weight.shape)} and styles "
                         f"{tuple(styles.shape)} disagree (styles must be [N, in_channels])")

    if x.dtype == torch.float16 and demodulate:
        # Rescale to O(1) before the products below so they cannot overflow fp16; demodulation removes
        # any global scale of either factor again.
        weight = weight * (1 / np.sqrt(in_c * kh * kw) / weight.norm(float("inf"), dim=[1, 2, 3], keepdim=True))
        styles = styles / styles.norm(float("inf"), dim=1, keepdim=True)

    per_sample = None
    demod = None
    if demodulate or fused_modconv:
        per_sample = weight.unsqueeze(0) * styles.reshape(batch, 1, in_c, 1, 1)  # [N, O, I, kh, kw]
    if demodulate:
        demod = (per_sample.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt()  # [N, O]

    conv_kwargs = dict(f=resample_filter, up=up, down=down, padding=padding, flip_weight=flip_weight)
    if not fused_modconv:
        x = x * styles.to(x.dtype).reshape(batch, in_c, 1, 1)
        x = conv2d_resample(x, weight.to(x.dtype), **conv_kwargs)
        if demod is not None:
            x = x * demod.to(x.dtype).reshape(batch, out_c, 1, 1)
    else:
        if demod is not None:
            per_sample = per_sample * demod.reshape(batch, out_c, 1, 1, 1)
        # The batch becomes the group axis: one grouped conv applies every sample's own weight.
        y = conv2d_resample(x.reshape(1, batch * in_c, *x.shape[2:]),
                            per_sample.reshape(batch * out_c, in_c, kh, kw).to(x.dtype), groups=batch, **conv_kwargs)
        x = y.reshape(batch, out_c, *y.shape[2:])
    if noise is not None:
        x = x + noise.to(x.dtype)
    return x


# ------------------------------------------------------------------------------------------------------
# StyleGAN3 filtered activation
# ------------------------------------------------------------------------------------------------------
def filtered_lrelu(
    x: torch.Tensor,
    fu: torch.Tensor | None = None,
    fd: torch.Tensor | None = None,
    b: torch.Tensor | None = None,
    up: int = 1,
    down: int = 1,
    padding: Padding = 0,
    gain: float = _SQRT2,
    slope: float = 0.2,
    clamp: float | None = None,
    flip_filter: bool = False,
) -> torch.Tensor:
    """Alias-free leaky ReLU: add bias, upsample with ``fu`` (padding w.r.t. the upsampled image), apply
    ``lrelu(·, slope) * gain``, clamp to ±``clamp``, then filter with ``fd`` and downsample.

    Output size is ``(in * up + pad0 + pad1 - (fu_taps - 1) - (fd_taps - 1) + down - 1) // down``.
    """
    _require_images(x, "filtered_lrelu: x")
    if not (isinstance(up, int) and up >= 1 and isinstance(down, int) and down >= 1):
        raise ConfigError(f"filtered_lrelu: up and down must be positive ints, got {up}, {down}")
    if gain <= 0 or slope < 0:
        raise ConfigError(f"filtered_lrelu: need gain > 0 and slope >= 0, got {gain}, {slope}")
    x = bias_act(x, b)
    x = upfirdn2d(x, fu, up=up, padding=padding, gain=up ** 2, flip_filter=flip_filter)
    x = bias_act(x, act="lrelu", alpha=slope, gain=gain, clamp=clamp)
    return upfirdn2d(x, fd, down=down, flip_filter=flip_filter)
