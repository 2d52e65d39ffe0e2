"""Look up a scan's base colour where its texture maps say: the one sampler both scan consumers share.

A textured scan (:class:`engine.mesh.SurfaceTexture`) reaches two places that need its colour at points on
its triangles: head mode's closest-point colour targets (:class:`engine.heads.mesh_field.MeshQuery`) and the
scan rasteriser (:func:`engine.heads.scan_views.render_scan_views`, whose views are the photometric targets
and the inversion's targets). Both go through :class:`TextureSampler`, so they agree texel for texel.

Sampling follows glTF's defaults: bilinear filtering between texel centres and ``REPEAT`` wrapping (a u of
1.25 reads the same texel as 0.25). The texel at row ``r``, column ``c`` of an H×W image has its centre at
``u = (c + 0.5)/W``, ``v = (r + 0.5)/H`` (v down from the top). Colours are multiplied in linear light.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ..mesh import SurfaceTexture


def srgb_to_linear(c: Tensor) -> Tensor:
    """IEC 61966-2-1 decoding of values in [0, 1]."""
    c = c.clamp(0.0, 1.0)
    return torch.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(c: Tensor) -> Tensor:
    """IEC 61966-2-1 encoding of values in [0, 1]."""
    c = c.clamp(0.0, 1.0)
    return torch.where(c <= 0.0031308, c * 12.92, 1.055 * c.clamp_min(1e-12) ** (1.0 / 2.4) - 0.055)


def sample_bilinear(image: Tensor, uv: Tensor) -> Tensor:
    """(M, C) bilinear samples of ``image`` (H, W, C) at ``uv`` (M, 2), wrapping around (glTF ``REPEAT``)."""
    height, width = image.shape[:2]
    x = uv[:, 0] * width - 0.5
    y = uv[:, 1] * height - 0.5
    x0, y0 = torch.floor(x), torch.floor(y)
    fx, fy = (x - x0).unsqueeze(-1), (y - y0).unsqueeze(-1)
    x0, y0 = x0.long(), y0.long()
    xs = (torch.remainder(x0, width), torch.remainder(x0 + 1, width))
    ys = (torch.remainder(y0, height), torch.remainder(y0 + 1, height))
    flat = image.reshape(height * width, -1)
    texel = lambda row, col: flat[row * width + col]  # noqa: E731
    top = texel(ys[0], xs[0]) * (1 - fx) + texel(ys[0], xs[1]) * fx
    bottom = texel(ys[1], xs[0]) * (1 - fx) + texel(ys[1], xs[1]) * fx
    return top * (1 - fy) + bottom * fy


class TextureSampler:
    """A :class:`SurfaceTexture` as tensors (images in linear light), sampled at points given by triangle and
    barycentric weights."""

    def __init__(self, texture: SurfaceTexture, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
        self.corner_uv = torch.as_tensor(np.asarray(texture.corner_uv), dtype=dtype, device=device)
        self.face_image = torch.as_tensor(np.asarray(texture.face_image, np.int64), device=device)
        self.images = [srgb_to_linear(torch.as_tensor(np.asarray(img), device=device).to(dtype) / 255.0)
                       for img in texture.images]

    def sample(self, face: Tensor, bary: Tensor) -> tuple[Tensor, Tensor]:
        """(linear colour (M, 3), textured (M,) bool) at barycentric ``bary`` (M, 3) of triangles ``face`` (M,).

        Points on untextured faces (``face_image`` −1) get colour 1 (white: the vertex colour alone shows).
        """
        uv = (self.corner_uv[face] * bary.to(self.corner_uv).unsqueeze(-1)).sum(1)  # (M, 2)
        which = self.face_image[face]
        colour = torch.ones(face.shape[0], 3, dtype=self.corner_uv.dtype, device=face.device)
        for index, image in enumerate(self.images):  # one vectorised lookup per image (a scan has a few)
            rows = (which == index).nonzero(as_tuple=True)[0]
            if rows.numel():
                colour[rows] = sample_bilinear(image, uv[rows])
        return colour, which >= 0
