"""Distillation mathematics of "Identity Preserving 3D Head Stylization with Multiview Score Distillation".

Pure tensor functions, one job each, switched by ``DistillConfig``; no diffusion model and no generator in
here. The training loop takes noise predictions from ``engine.guidance`` and calls, per step:

    alpha = alpha_bar_for(alphas_cumprod, t, k, cfg.official_compat)
    grad = distillation_gradient(cfg, eps_text, eps_uncond, eps, alpha, mask, stage="single")
    g_base, g_mirror = mirror_weighted_gradients(grad, cfg.mirror_weights)
    loss = inject_gradient(latent, g_base) + inject_gradient(latent_mirror, g_mirror) + regularisers…
"""

from .config import DistillConfig
from .gradients import (
    alpha_bar_for,
    distillation_gradient,
    guided_score,
    ld_gradient,
    postprocess_gradient,
    sds_gradient,
    sds_gradient_from_score,
)
from .grid import flip_each_tile, resize_and_tile, resize_views, tile_2x2, untile_2x2, upsample_for_grid
from .inject import inject_gradient
from .mirror import mirror_camera, mirror_gradient, mirror_weighted_gradients
from .rank import match_channel_stats, rank_reweight
from .regularizers import LpipsLoss, anchor_loss, ldis_loss, tweedie_loss, tweedie_x0

__all__ = [
    "DistillConfig",
    "LpipsLoss",
    "alpha_bar_for",
    "anchor_loss",
    "distillation_gradient",
    "flip_each_tile",
    "guided_score",
    "inject_gradient",
    "ld_gradient",
    "ldis_loss",
    "match_channel_stats",
    "mirror_camera",
    "mirror_gradient",
    "mirror_weighted_gradients",
    "postprocess_gradient",
    "rank_reweight",
    "resize_and_tile",
    "resize_views",
    "sds_gradient",
    "sds_gradient_from_score",
    "tile_2x2",
    "tweedie_loss",
    "tweedie_x0",
    "untile_2x2",
    "upsample_for_grid",
]
