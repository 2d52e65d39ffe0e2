"""The two small recognition networks of the embedded pack: an identity encoder and a style classifier.

They stand in for ArcFace (identity) and CLIP (style) when measuring stylization results offline. Both share
one backbone design: a strided CNN on 48² images whose final 3×3 feature map is *flattened*, not pooled,
because where a feature sits (nose vs. ear vs. hair) is what tells identities apart. The identity encoder
puts an L2-normalised embedding on top (cosine similarity is the comparison everywhere) plus a regression
head onto the world's identity vector that is used only as a training signal; the style classifier is a
linear softmax over the registered styles.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...errors import ConfigError
from ...io.configs import JsonConfig
from .preprocess import prepare_images


@dataclass(frozen=True)
class BackboneConfig(JsonConfig):
    """A stack of stride-2 stages. ``double_from`` is the first stage that gets a second (stride-1) conv;
    extra convs are cheap at low resolution and expensive at full resolution, hence not everywhere."""

    config_label: ClassVar[str] = "recognition backbone"

    input_size: int = 48  # the pack's networks see 48² (renders of any size are resized to it)
    channels: tuple[int, ...] = (24, 48, 96, 128)
    double_from: int = 1
    feature_dim: int = 256

    def validate(self) -> "BackboneConfig":
        if self.input_size < 16 or self.input_size % (2 ** len(self.channels)):
            raise ConfigError(
                f"{self.config_label}: input_size {self.input_size} must be ≥ 16 and divisible by "
                f"2^{len(self.channels)} (one halving per stage)"
            )
        if not self.channels or any(int(c) < 1 for c in self.channels):
            raise ConfigError(f"{self.config_label}: channels must be positive, got {self.channels}")
        if self.feature_dim < 1:
            raise ConfigError(f"{self.config_label}: feature_dim must be ≥ 1, got {self.feature_dim}")
        return self

    @property
    def final_size(self) -> int:
        return self.input_size // 2 ** len(self.channels)


@dataclass(frozen=True)
class IdentityEncoderConfig(JsonConfig):
    config_label: ClassVar[str] = "identity encoder"

    backbone: BackboneConfig = BackboneConfig(feature_dim=192)
    embed_dim: int = 64
    identity_dim: int = 32  # length of the world's identity vector the auxiliary head regresses

    def validate(self) -> "IdentityEncoderConfig":
        self.backbone.validate()
        if self.embed_dim < 2 or self.identity_dim < 1:
            raise ConfigError(f"{self.config_label}: embed_dim must be ≥ 2 and identity_dim ≥ 1")
        return self


@dataclass(frozen=True)
class StyleClassifierConfig(JsonConfig):
    config_label: ClassVar[str] = "style classifier"

    backbone: BackboneConfig = BackboneConfig(channels=(16, 32, 64, 64), double_from=2, feature_dim=128)
    styles: tuple[str, ...] = ("photo", "statue", "zombie", "cartoon", "sketch", "gold")

    def validate(self) -> "StyleClassifierConfig":
        self.backbone.validate()
        if len(self.styles) < 2 or len(set(self.styles)) != len(self.styles):
            raise ConfigError(f"{self.config_label}: styles must be ≥ 2 distinct names, got {self.styles}")
        return self


class Backbone(nn.Module):
    """(N, 3, S, S) in [-1, 1] → (N, feature_dim) features."""

    def __init__(self, config: BackboneConfig):
        super().__init__()
        config = config.validate()
        layers: list[nn.Module] = []
        c_in = 3
        for index, c_out in enumerate(config.channels):
            layers += [nn.Conv2d(c_in, c_out, 3, 2, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
            if index >= config.double_from:
                layers += [nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
            c_in = c_out
        self.convs = nn.Sequential(*layers)
        self.project = nn.Sequential(
            nn.Flatten(), nn.Linear(c_in * config.final_size**2, config.feature_dim), nn.BatchNorm1d(config.feature_dim),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.project(self.convs(x))


class _RecognitionNet(nn.Module):
    """Shared plumbing: images of any size go through :func:`prepare_images` on the module's device."""

    input_size: int

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def _prepare(self, images: Tensor) -> Tensor:
        return prepare_images(images, self.input_size, self.device)


class IdentityEncoder(_RecognitionNet):
    """Style- and view-invariant identity embedding of a head image (the embedded pack's ArcFace)."""

    kind: ClassVar[str] = "identity_encoder"

    def __init__(self, config: IdentityEncoderConfig = IdentityEncoderConfig()):
        super().__init__()
        self.config = config.validate()
        self.input_size = config.backbone.input_size
        self.backbone = Backbone(config.backbone)
        self.embed_head = nn.Linear(config.backbone.feature_dim, config.embed_dim)
        self.identity_head = nn.Linear(config.backbone.feature_dim, config.identity_dim)

    def forward_train(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Already-prepared input → (unit embeddings, predicted identity vectors), gradients on."""
        features = self.backbone(x)
        return F.normalize(self.embed_head(features), dim=-1), self.identity_head(features)

    def forward(self, images: Tensor) -> Tensor:
        """(N, 3, H, W) in [-1, 1], any H×W → (N, embed_dim) unit-length embeddings."""
        return F.normalize(self.embed_head(self.backbone(self._prepare(images))), dim=-1)

    @torch.no_grad()
    def embed(self, images: Tensor, batch_size: int = 256) -> Tensor:
        """Embeddings without gradients, in chunks of ``batch_size`` (eval mode is the caller's choice)."""
        images = prepare_images(images, self.input_size, None)
        return torch.cat([self(chunk) for chunk in images.split(batch_size)])


class StyleClassifier(_RecognitionNet):
    """Which of the registered styles a head image shows (the embedded pack's CLIP stand-in)."""

    kind: ClassVar[str] = "style_classifier"

    def __init__(self, config: StyleClassifierConfig = StyleClassifierConfig()):
        super().__init__()
        self.config = config.validate()
        self.input_size = config.backbone.input_size
        self.backbone = Backbone(config.backbone)
        self.classify = nn.Linear(config.backbone.feature_dim, len(config.styles))

    @property
    def styles(self) -> tuple[str, ...]:
        return self.config.styles

    def forward(self, images: Tensor) -> Tensor:
        """(N, 3, H, W) in [-1, 1] → (N, n_styles) logits."""
        return self.classify(self.backbone(self._prepare(images)))

    def style_index(self, style: str) -> int:
        if style not in self.styles:
            raise ConfigError(f"style classifier knows the styles {', '.join(self.styles)}; got {style!r}")
        return self.styles.index(style)

    @torch.no_grad()
    def predict(self, images: Tensor, batch_size: int = 256) -> Tensor:
        """(N, n_styles) softmax probabilities, columns in the order of :attr:`styles`."""
        images = prepare_images(images, self.input_size, None)
        return torch.cat([self(chunk).softmax(dim=-1) for chunk in images.split(batch_size)])

    def style_score(self, images: Tensor, style: str) -> Tensor:
        """(N,) probability that each image shows ``style``."""
        return self.predict(images)[:, self.style_index(style)]
