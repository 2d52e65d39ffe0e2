"""The tri-grid feature decoder (EG3D/PanoHead ``OSGDecoder``).

A two-layer MLP shared by every sample point: the features gathered from the three planes are averaged,
then mapped to one raw density and ``output_dim`` colour features. The parameters live in ``net.0`` and
``net.2`` (``net.1`` is the Softplus) so that PanoHead's ``decoder.net.*`` weights load by name.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import ConfigError, InputError
from .config import PLANE_FEATURES, RenderingConfig
from .stylegan2 import FullyConnectedLayer

DECODER_ACTIVATIONS = ("none", "sigmoid", "lrelu")


class OSGDecoder(nn.Module):
    """``(sampled_features [N, planes, M, C], ray_directions [N, M, 3]) → {'rgb': [N, M, out], 'sigma': [N, M, 1]}``.

    Activation of the colour features:

    * ``"sigmoid"`` (EG3D): ``sigmoid(x) * 1.002 - 0.001``, i.e. range (-0.001, 1.001), which lets the
      renderer reach exact 0 and 1 colours;
    * ``"lrelu"``: StyleGAN-style ``leaky_relu(x, 0.2) * sqrt(2)``;
    * ``"none"`` (PanoHead): raw features, turned into RGB later by a ToRGB layer.

    ``sigma`` is always raw (the renderer applies the density activation). Ray directions are unused, as in
    the original; the argument keeps the renderer's call signature.
    """

    def __init__(self, n_features: int = PLANE_FEATURES, hidden: int = 64, output_dim: int = PLANE_FEATURES,
                 lr_mul: float = 1.0, activation: str = "none"):
        super().__init__()
        if activation not in DECODER_ACTIVATIONS:
            raise ConfigError(f"OSGDecoder: activation must be one of {DECODER_ACTIVATIONS}, got {activation!r}")
        self.n_features = n_features
        self.hidden_dim = hidden
        self.output_dim = output_dim
        self.activation = activation
        self.net = nn.Sequential(
            FullyConnectedLayer(n_features, hidden, lr_multiplier=lr_mul),
            nn.Softplus(),
            FullyConnectedLayer(hidden, 1 + output_dim, lr_multiplier=lr_mul),
        )

    @classmethod
    def from_config(cls, rendering: RenderingConfig) -> "OSGDecoder":
        return cls(n_features=PLANE_FEATURES, hidden=rendering.decoder_hidden, output_dim=rendering.decoder_output_dim,
                   lr_mul=rendering.decoder_lr_mul, activation=rendering.decoder_activation)

    def forward(self, sampled_features: torch.Tensor, ray_directions: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        del ray_directions  # view-independent colour, as in EG3D/PanoHead
        if sampled_features.ndim != 4 or sampled_features.shape[-1] != self.n_features:
            raise InputError(f"OSGDecoder: sampled_features must be [N, planes, M, {self.n_features}], "
                             f"got {tuple(sampled_features.shape)}")
        x = sampled_features.mean(dim=1)  # [N, M, C]
        n, m, c = x.shape
        x = self.net(x.reshape(n * m, c)).reshape(n, m, -1)
        sigma, rgb = x[..., :1], x[..., 1:]
        if self.activation == "sigmoid":
            rgb = torch.sigmoid(rgb) * (1 + 2 * 0.001) - 0.001
        elif self.activation == "lrelu":
            rgb = nn.functional.leaky_relu(rgb, 0.2) * math.sqrt(2)
        return {"rgb": rgb, "sigma": sigma}


__all__ = ["OSGDecoder", "DECODER_ACTIVATIONS"]
