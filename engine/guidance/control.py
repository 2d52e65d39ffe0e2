"""ControlNet conditioning images computed from the frozen generator's renders, in pure torch.

The single-view stage conditions Stable Diffusion on Canny edges of the frozen generator's render (the
official code calls ``cv2.Canny(red_channel_uint8, 50, 250)``); the grid stage conditions it on a depth map.
Both are produced here on the render's own device, batched, without OpenCV or a monocular depth network:

* :func:`canny_edges` re-implements OpenCV's Canny (3×3 Sobel, L1 magnitude, fixed-point direction
  quantisation, the same asymmetric tie-breaking in non-maximum suppression, double threshold, 8-connected
  hysteresis) so the thresholds mean what they mean in OpenCV and the edge maps match what
  ``lllyasviel/sd-controlnet-canny`` was trained on.
* :func:`depth_control` turns the generator's own depth render into the "near is bright" relative inverse
  depth that the MiDaS-trained depth ControlNets expect. The official code estimates depth from the render
  with DepthAnythingV2 instead; the generator already knows its geometry, so we use it directly.

Both return ``(B, 3, H, W)`` tensors in ``[0, 1]``, the value range ControlNets take.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F

from ..errors import InputError

ValueRange = tuple[float, float]
ChannelChoice = Literal["red", "luma", "mean"]

# OpenCV quantises the gradient direction with 15-bit fixed point: tan(22.5°) ≈ 13573 / 2**15. Using the
# very same constants keeps the horizontal / diagonal / vertical decision identical at the boundaries.
_TAN_22_5 = 13573.0 / 32768.0
_TAN_67_5 = (13573.0 + 2 * 32768.0) / 32768.0

# Hysteresis grows edges one pixel per dilation; checking for convergence costs a device sync, so the
# growth runs this many dilations between checks.
_DILATIONS_PER_CHECK = 8

_LUMA_WEIGHTS = (0.299, 0.587, 0.114)


def _check_image(image: torch.Tensor, name: str, channels: tuple[int, ...]) -> None:
    if not isinstance(image, torch.Tensor):
        raise InputError(f"{name} must be a torch.Tensor, got {type(image).__name__}")
    if image.dim() != 4 or image.shape[1] not in channels:
        raise InputError(
            f"{name} must have shape (B, C, H, W) with C in {channels}, got {tuple(image.shape)}"
        )
    if image.shape[-1] < 3 or image.shape[-2] < 3:
        raise InputError(f"{name} must be at least 3×3 pixels, got {tuple(image.shape[-2:])}")


def _to_intensity_255(
    image: torch.Tensor, value_range: ValueRange, channel: ChannelChoice, quantize: bool
) -> torch.Tensor:
    """Single-channel float intensity on OpenCV's 0–255 scale, shape (B, 1, H, W)."""
    lo, hi = value_range
    if not hi > lo:
        raise InputError(f"value_range must be (low, high) with high > low, got {value_range}")
    x = image.float()
    if x.shape[1] == 3:
        if channel == "red":
            x = x[:, :1]
        elif channel == "luma":
            weights = x.new_tensor(_LUMA_WEIGHTS).view(1, 3, 1, 1)
            x = (x * weights).sum(dim=1, keepdim=True)
        elif channel == "mean":
            x = x.mean(dim=1, keepdim=True)
        else:
            raise InputError(f"channel must be 'red', 'luma' or 'mean', got {channel!r}")
    x = ((x - lo) * (255.0 / (hi - lo))).clamp(0.0, 255.0)
    # The official code converts with ``astype(np.uint8)``, which truncates.
    return x.floor() if quantize else x


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, math.ceil(3.0 * sigma))
    offsets = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    x = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, kernel.view(1, 1, 1, -1))
    return F.conv2d(x, kernel.view(1, 1, -1, 1))


def _sobel(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """3×3 Sobel derivatives (right minus left, bottom minus top) with replicated borders, like OpenCV."""
    smooth = x.new_tensor([1.0, 2.0, 1.0])
    diff = x.new_tensor([-1.0, 0.0, 1.0])
    kernels = torch.stack([torch.outer(smooth, diff), torch.outer(diff, smooth)]).unsqueeze(1)
    grads = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernels)
    return grads[:, :1], grads[:, 1:]


def _non_maximum_suppression(
    magnitude: torch.Tensor, gx: torch.Tensor, gy: torch.Tensor
) -> torch.Tensor:
    """Boolean map of pixels that are local maxima across the (quantised) gradient direction.

    The comparison rules copy OpenCV's, including which side wins a tie (``>`` towards the left / upper
    neighbour, ``>=`` towards the right / lower one), so a step edge comes out one pixel thick at the same
    place OpenCV puts it. Outside the image the magnitude counts as zero.
    """
    height, width = magnitude.shape[-2:]
    padded = F.pad(magnitude, (1, 1, 1, 1))

    def neighbour(dy: int, dx: int) -> torch.Tensor:
        return padded[..., 1 + dy : 1 + dy + height, 1 + dx : 1 + dx + width]

    ax, ay = gx.abs(), gy.abs()
    horizontal = ay < ax * _TAN_22_5
    vertical = ay > ax * _TAN_67_5
    # Same-sign derivatives: the gradient runs along the main diagonal (up-left ↔ down-right).
    main_diagonal = (gx < 0) == (gy < 0)

    keep_horizontal = (magnitude > neighbour(0, -1)) & (magnitude >= neighbour(0, 1))
    keep_vertical = (magnitude > neighbour(-1, 0)) & (magnitude >= neighbour(1, 0))
    keep_main = (magnitude > neighbour(-1, -1)) & (magnitude > neighbour(1, 1))
    keep_anti = (magnitude > neighbour(-1, 1)) & (magnitude > neighbour(1, -1))
    keep_diagonal = torch.where(main_diagonal, keep_main, keep_anti)
    return torch.where(horizontal, keep_horizontal, torch.where(vertical, keep_vertical, keep_diagonal))


def _hysteresis(strong: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """Grow ``strong`` through 8-connected ``candidates`` until nothing changes (a flood fill by dilation)."""
    edges = strong.float()
    allowed = candidates.float()
    while True:
        before = edges
        for _ in range(_DILATIONS_PER_CHECK):
            edges = F.max_pool2d(edges, kernel_size=3, stride=1, padding=1) * allowed
        if torch.equal(edges, before):
            return edges > 0


def canny_edges(
    image: torch.Tensor,
    low: float = 50.0,
    high: float = 250.0,
    *,
    value_range: ValueRange = (-1.0, 1.0),
    channel: ChannelChoice = "red",
    blur_sigma: float = 0.0,
    l2_gradient: bool = False,
    quantize: bool = True,
) -> torch.Tensor:
    """Canny edge map of ``image`` as a ControlNet conditioning image.

    Args:
        image: ``(B, 3, H, W)`` (or ``(B, 1, H, W)``) in ``value_range``. The default ``(-1, 1)`` is the
            generator's output range; pass ``value_range=(0, 1)`` for images in ``[0, 1]``.
        low, high: hysteresis thresholds on OpenCV's scale (0–255 intensities, L1 Sobel magnitude, so a
            full black-to-white step has magnitude 1020). Pixels above ``high`` seed edges; pixels above
            ``low`` extend them. Swapped if given in the wrong order, as OpenCV does.
        channel: which channel of an RGB image is edge-detected. ``"red"`` reproduces the official code
            (it passes channel 0 of the render to ``cv2.Canny``); ``"luma"`` and ``"mean"`` are alternatives.
        blur_sigma: optional Gaussian pre-blur (pixels). ``cv2.Canny`` does not blur, nor did the
            annotator the Canny ControlNet was trained with, so the default 0 keeps parity with them.
        l2_gradient: use the Euclidean gradient magnitude instead of OpenCV's default L1.
        quantize: truncate intensities to integers first, as the official ``astype(np.uint8)`` does.

    Returns:
        ``(B, 3, H, W)`` with 1 on edges and 0 elsewhere, in the input's floating dtype and on its device.
    """
    _check_image(image, "image", (1, 3))
    if blur_sigma < 0:
        raise InputError(f"blur_sigma must be >= 0, got {blur_sigma}")
    low, high = (float(high), float(low)) if low > high else (float(low), float(high))

    x = _to_intensity_255(image, value_range, channel, quantize)
    if blur_sigma > 0:
        x = _gaussian_blur(x, blur_sigma)
    gx, gy = _sobel(x)
    magnitude = torch.hypot(gx, gy) if l2_gradient else gx.abs() + gy.abs()

    candidates = (magnitude > low) & _non_maximum_suppression(magnitude, gx, gy)
    strong = candidates & (magnitude > high)
    edges = _hysteresis(strong, candidates)

    out_dtype = image.dtype if image.is_floating_point() else torch.float32
    return edges.to(out_dtype).expand(-1, 3, -1, -1).contiguous()


def depth_control(
    depth: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    eps: float = 1e-6,
) -> torch.Tensor:
    """Depth-ControlNet conditioning image from the generator's depth render.

    The lllyasviel depth ControlNets were trained on MiDaS output: relative *inverse* depth, min–max
    normalised per image, so near surfaces are bright and the far background is black. We reproduce that
    from metric depth: take ``1 / depth``, normalise it to ``[0, 1]`` over the foreground of each image
    (nearest foreground point → 1, farthest → 0) and set the background to 0.

    Args:
        depth: ``(B, 1, H, W)`` distance along the ray, as rendered.
        mask: optional ``(B, 1, H, W)`` foreground opacity in ``[0, 1]``. Pixels with ``mask > 0.5`` define
            the normalisation range, and the result is multiplied by the (clamped) mask so antialiased
            silhouettes fade into the background. Without a mask every pixel with finite positive depth is
            foreground.
        eps: guards against division by zero (zero depth, flat depth).

    Returns:
        ``(B, 3, H, W)`` in ``[0, 1]``, the map replicated to three channels, in the depth's dtype. An image
        whose foreground is perfectly flat maps its foreground to 1; an image without foreground to 0.
    """
    _check_image(depth, "depth", (1,))
    if not depth.is_floating_point():
        raise InputError(f"depth must be a floating-point tensor, got {depth.dtype}")
    if mask is not None:
        _check_image(mask, "mask", (1,))
        if mask.shape[0] != depth.shape[0] or mask.shape[-2:] != depth.shape[-2:]:
            raise InputError(
                f"mask shape {tuple(mask.shape)} does not match depth shape {tuple(depth.shape)}"
            )

    d = depth.float()
    valid = torch.isfinite(d) & (d > 0)
    if mask is None:
        foreground = valid
        weight = foreground.float()
    else:
        weight = mask.float().clamp(0.0, 1.0)
        foreground = valid & (weight > 0.5)
        weight = weight * valid

    inverse = torch.where(valid, 1.0 / d.clamp_min(eps), torch.zeros_like(d))
    flat = inverse.flatten(1)
    fg = foreground.flatten(1)
    near = torch.where(fg, flat, torch.full_like(flat, -math.inf)).amax(dim=1).view(-1, 1, 1, 1)
    far = torch.where(fg, flat, torch.full_like(flat, math.inf)).amin(dim=1).view(-1, 1, 1, 1)
    span = near - far
    has_range = torch.isfinite(span) & (span > eps)
    normalised = torch.where(has_range, (inverse - far) / span.clamp_min(eps), torch.ones_like(inverse))
    # Foreground pixels are in range by construction; the clamp bounds soft-mask pixels outside it.
    control = normalised.clamp(0.0, 1.0) * weight
    return control.to(depth.dtype).expand(-1, 3, -1, -1).contiguous()
