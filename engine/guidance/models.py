"""Loading the frozen diffusion models (Stable Diffusion 1.5 layout + ControlNets) from local folders.

The official code builds two complete ``StableDiffusionControlNetPipeline``s, one per ControlNet, which
loads the UNet, VAE and text encoder twice. Guidance only needs one of each: both ControlNets produce
residuals for the same UNet, so :func:`load_diffusion_models` loads every component once, from
``from_pretrained(..., local_files_only=True)`` on folders that were checked to exist first (so a typo in a
path can never be mistaken for a Hugging Face Hub repository id and trigger a download).

Every component is frozen (``requires_grad=False``, ``eval()``): guidance differentiates through the VAE
encoder with respect to its *input* only.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping

import torch

from ..errors import CheckpointError, ConfigError

if TYPE_CHECKING:  # heavy imports stay lazy for type checkers only
    from diffusers import AutoencoderKL, ControlNetModel, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

log = logging.getLogger(__name__)

CONTROL_KINDS = ("edge", "depth")

_SD_HINT = "is this a Stable Diffusion 1.5 folder (subfolders unet, vae, text_encoder, tokenizer, scheduler)?"
_DIFFUSERS_WEIGHTS = "diffusion_pytorch_model"
_TRANSFORMERS_WEIGHTS = ("model", "pytorch_model")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".safetensors.index.json", ".bin.index.json")

# ``low_cpu_mem_usage=False`` says explicitly what diffusers falls back to without ``accelerate`` (which
# is not a dependency), instead of letting it warn on every component.
_DIFFUSERS_OFFLINE: dict[str, Any] = {"local_files_only": True, "low_cpu_mem_usage": False}

_DTYPE_NAMES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "full": torch.float32,
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
}


@dataclass(frozen=True)
class MemoryOptions:
    """Cheap memory/speed switches applied after loading.

    ``attention_slicing`` trades speed for memory and is rarely worth it with PyTorch 2's fused attention,
    hence off. ``channels_last`` (on) stores the UNet's, the ControlNets' and the VAE decoder's weights
    channels-last, which their convolutions run faster in: on 2 CPU cores the reduced-size stylization step
    (bench/compare_official.py) went from 31.8 to 28.x s, and half-precision CUDA convolutions prefer it too. The
    VAE *encoder* stays as it is: its backward (the renders' gradient) ran slower channels-last on CPU.
    ``vae_tiling`` only changes anything for images larger than the VAE's tile (512² for SD 1.5) and then
    blends tiles, which slightly changes latents, hence off. ``vae_slicing`` encodes a batch one image at
    a time, identical results with a lower peak; on the gradient path (renders being distilled) it also
    recomputes each image's encoder activations during the backward instead of keeping them (1.5 GiB per
    512² image in fp16 for SD 1.5's VAE), at the cost of one more encoder forward per image.
    """

    attention_slicing: bool | str | int = False
    channels_last: bool = True
    vae_tiling: bool = False
    vae_slicing: bool = False


@dataclass
class DiffusionModels:
    """The frozen components guidance needs, on one device and in one dtype.

    ``vae`` is ``None`` for a pixel-space model: its "latents" are the image itself in ``[-1, 1]`` and
    ``vae_scaling_factor`` is 1. ``controlnets`` maps a control kind (``"edge"``, ``"depth"``) to its
    ControlNet; both share ``unet``.
    """

    unet: UNet2DConditionModel
    vae: AutoencoderKL | None
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    scheduler: DDIMScheduler
    controlnets: dict[str, ControlNetModel] = field(default_factory=dict)
    dtype: torch.dtype = torch.float32
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    vae_scaling_factor: float = 1.0
    source: Path | None = None

    @property
    def latent_channels(self) -> int:
        return int(self.unet.config.in_channels)

    @property
    def vae_downsample(self) -> int:
        """Image pixels per latent pixel along each axis (8 for SD 1.5, 1 for a pixel-space model)."""
        if self.vae is None:
            return 1
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def text_length(self) -> int:
        """Number of tokens every prompt is padded/truncated to."""
        return token_length(self.tokenizer, self.text_encoder)


def token_length(tokenizer: Any, text_encoder: Any) -> int:
    """Prompt length: the tokenizer's ``model_max_length``, capped by the text encoder's positions.

    Some tokenizer folders omit ``model_max_length`` (transformers then reports a huge sentinel), so the
    text encoder's ``max_position_embeddings`` is the reliable upper bound.
    """
    limit = int(getattr(text_encoder.config, "max_position_embeddings", 77))
    length = int(getattr(tokenizer, "model_max_length", limit) or limit)
    return min(length, limit)


def controlnet_downsample(controlnet: ControlNetModel) -> int:
    """Control-image pixels per latent pixel: the conditioning embedding halves the size per extra block."""
    return 2 ** (len(controlnet.config.conditioning_embedding_out_channels) - 1)


def resolve_dtype(dtype: str | torch.dtype, device: torch.device | str) -> torch.dtype:
    """Pick the compute dtype: ``'auto'`` is fp16 on accelerators and fp32 on CPU.

    bf16 is honoured where the device supports it; on a CUDA device without bf16 it falls back to fp16.
    """
    device = torch.device(device)
    if isinstance(dtype, torch.dtype):
        resolved = dtype
    elif not isinstance(dtype, str):
        raise ConfigError(f"dtype must be 'auto', a dtype name or a torch.dtype, got {dtype!r}")
    elif dtype.lower() == "auto":
        resolved = torch.float32 if device.type == "cpu" else torch.float16
    elif dtype.lower() in _DTYPE_NAMES:
        resolved = _DTYPE_NAMES[dtype.lower()]
    else:
        raise ConfigError(f"dtype {dtype!r} is not one of 'auto', {', '.join(sorted(_DTYPE_NAMES))}")
    if resolved not in (torch.float32, torch.float16, torch.bfloat16):
        raise ConfigError(f"dtype must be a floating-point type (fp32, fp16, bf16), got {resolved}")
    if resolved == torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        log.warning("bf16 is not supported on %s; using fp16 instead", device)
        resolved = torch.float16
    return resolved


# ----------------------------------------------------------------------------------------------------------
# Folder checks: clear errors before diffusers/transformers ever see a path.


def _find_weights(folder: Path, stems: tuple[str, ...]) -> str | None:
    """Return the weights variant to load (``None`` = plain files), or raise if there are no weights."""
    for variant in (None, "fp16"):
        for stem in stems:
            name = stem if variant is None else f"{stem}.{variant}"
            if any((folder / f"{name}{suffix}").is_file() for suffix in _WEIGHT_SUFFIXES):
                return variant
    expected = " or ".join(f"{stem}.safetensors" for stem in stems)
    raise CheckpointError(f"{folder}: no weights found (expected {expected}) — {_SD_HINT}")


def _require_file(path: Path, hint: str = _SD_HINT) -> None:
    if not path.is_file():
        raise CheckpointError(f"{path} not found — {hint}")


def _require_dir(path: Path, what: str) -> Path:
    path = Path(path).expanduser()
    if not path.exists():
        raise CheckpointError(f"{what} folder {path} does not exist")
    if not path.is_dir():
        raise CheckpointError(f"{what} {path} is not a folder")
    return path


def _load(what: str, folder: Path, loader: Callable[[], Any]) -> Any:
    """Run a ``from_pretrained`` call, turning library exceptions into one readable CheckpointError."""
    try:
        return loader()
    except CheckpointError:
        raise
    except Exception as exc:  # diffusers/transformers raise many types (OSError, ValueError, KeyError...)
        raise CheckpointError(f"could not load the {what} from {folder}: {exc}") from exc


@contextlib.contextmanager
def quiet_progress_bars() -> Iterator[None]:
    """Hide the libraries' per-file progress bars while loading (tiny files, noisy logs); restore after."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    libraries = [lib for lib in (diffusers_logging, transformers_logging) if lib.is_progress_bar_enabled()]
    for lib in libraries:
        lib.disable_progress_bar()
    try:
        yield
    finally:
        for lib in libraries:
            lib.enable_progress_bar()


def _freeze(module: torch.nn.Module) -> torch.nn.Module:
    module.requires_grad_(False)
    module.eval()
    return module


# ----------------------------------------------------------------------------------------------------------
# Component loaders.


def _load_unet(folder: Path, dtype: torch.dtype) -> UNet2DConditionModel:
    from diffusers import UNet2DConditionModel

    sub = folder / "unet"
    _require_file(sub / "config.json")
    variant = _find_weights(sub, (_DIFFUSERS_WEIGHTS,))
    return _load(
        "UNet",
        sub,
        lambda: UNet2DConditionModel.from_pretrained(
            sub, torch_dtype=dtype, variant=variant, **_DIFFUSERS_OFFLINE
        ),
    )


def _load_vae(folder: Path, dtype: torch.dtype, unet_in_channels: int) -> AutoencoderKL | None:
    from diffusers import AutoencoderKL

    sub = folder / "vae"
    if not (sub / "config.json").is_file():
        if unet_in_channels == 3:
            return None  # pixel-space model: the UNet denoises RGB images directly
        raise CheckpointError(f"{sub / 'config.json'} not found — {_SD_HINT}")
    variant = _find_weights(sub, (_DIFFUSERS_WEIGHTS,))
    vae = _load(
        "VAE",
        sub,
        lambda: AutoencoderKL.from_pretrained(sub, torch_dtype=dtype, variant=variant, **_DIFFUSERS_OFFLINE),
    )
    if int(vae.config.latent_channels) != unet_in_channels:
        raise CheckpointError(
            f"{sub}: the VAE makes {vae.config.latent_channels}-channel latents but the UNet in "
            f"{folder / 'unet'} takes {unet_in_channels} channels"
        )
    return vae


def _load_text_encoder(folder: Path, dtype: torch.dtype) -> CLIPTextModel:
    from transformers import CLIPTextModel

    sub = folder / "text_encoder"
    _require_file(sub / "config.json")
    variant = _find_weights(sub, _TRANSFORMERS_WEIGHTS)
    kwargs: dict[str, Any] = {"dtype": dtype, "local_files_only": True}
    if variant is not None:
        kwargs["variant"] = variant
    return _load("text encoder", sub, lambda: CLIPTextModel.from_pretrained(sub, **kwargs))


def _load_tokenizer(folder: Path) -> CLIPTokenizer:
    from transformers import CLIPTokenizer

    sub = folder / "tokenizer"
    if not (sub / "tokenizer.json").is_file():
        _require_file(sub / "vocab.json")
        _require_file(sub / "merges.txt")
    return _load("tokenizer", sub, lambda: CLIPTokenizer.from_pretrained(sub, local_files_only=True))


def _load_scheduler(folder: Path) -> DDIMScheduler:
    """DDIM with the folder's noise schedule, whatever scheduler class the folder names (SD 1.5: PNDM)."""
    from diffusers import DDIMScheduler

    sub = folder / "scheduler"
    _require_file(sub / "scheduler_config.json")

    def build() -> DDIMScheduler:
        config = DDIMScheduler.load_config(sub, local_files_only=True)
        return DDIMScheduler.from_config(config)

    scheduler = _load("scheduler", sub, build)
    prediction = scheduler.config.prediction_type
    if prediction not in ("epsilon", "v_prediction", "sample"):
        raise CheckpointError(f"{sub}: unsupported prediction_type {prediction!r}")
    return scheduler


def _load_controlnet(
    kind: str, folder: Path, dtype: torch.dtype, unet: UNet2DConditionModel, pixels_per_latent: int
) -> ControlNetModel:
    from diffusers import ControlNetModel

    folder = _require_dir(folder, f"{kind} ControlNet")
    _require_file(folder / "config.json", hint="is this a ControlNet folder (config.json + weights)?")
    variant = _find_weights(folder, (_DIFFUSERS_WEIGHTS,))
    net = _load(
        f"{kind} ControlNet",
        folder,
        lambda: ControlNetModel.from_pretrained(folder, torch_dtype=dtype, variant=variant, **_DIFFUSERS_OFFLINE),
    )
    for key in ("in_channels", "block_out_channels", "cross_attention_dim"):
        ours, theirs = net.config.get(key), unet.config.get(key)
        if ours is not None and theirs is not None and list(_as_list(ours)) != list(_as_list(theirs)):
            raise CheckpointError(
                f"{kind} ControlNet {folder} does not fit the UNet: {key} is {ours} vs the UNet's {theirs}"
            )
    if controlnet_downsample(net) != pixels_per_latent:
        raise CheckpointError(
            f"{kind} ControlNet {folder} expects control images {controlnet_downsample(net)}× the latent size, "
            f"but the VAE downsamples by {pixels_per_latent}"
        )
    return net


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def apply_memory_options(models: DiffusionModels, options: MemoryOptions) -> None:
    """Attention slicing, channels-last and VAE tiling/slicing, as ``options`` asks."""
    if options.attention_slicing:
        slice_size = "auto" if options.attention_slicing is True else options.attention_slicing
        models.unet.set_attention_slice(slice_size)
        for net in models.controlnets.values():
            net.set_attention_slice(slice_size)
    if options.channels_last:
        models.unet.to(memory_format=torch.channels_last)
        for net in models.controlnets.values():
            net.to(memory_format=torch.channels_last)
        if models.vae is not None:  # the decoder only: see MemoryOptions
            models.vae.post_quant_conv.to(memory_format=torch.channels_last)
            models.vae.decoder.to(memory_format=torch.channels_last)
    if models.vae is not None:
        if options.vae_tiling:
            models.vae.enable_tiling()
        if options.vae_slicing:
            models.vae.enable_slicing()


def load_diffusion_models(
    sd_folder: str | Path,
    edge_controlnet: str | Path | None = None,
    depth_controlnet: str | Path | None = None,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype = "auto",
    memory: MemoryOptions | None = None,
) -> DiffusionModels:
    """Load a Stable-Diffusion-1.5-layout folder and optional ControlNets, offline, frozen, on ``device``.

    Args:
        sd_folder: folder with ``unet/``, ``vae/`` (optional for a pixel-space UNet with 3 input channels),
            ``text_encoder/``, ``tokenizer/`` and ``scheduler/``. Plain or ``fp16``-variant weights.
        edge_controlnet, depth_controlnet: ControlNet folders (``config.json`` + weights), or ``None``.
        device: where the models run.
        dtype: ``'auto'`` (fp16 on accelerators, fp32 on CPU), ``'fp16'``, ``'bf16'``, ``'fp32'`` or a
            ``torch.dtype``.
        memory: see :class:`MemoryOptions`.

    Raises:
        CheckpointError: a folder or file is missing, or a component does not load or does not fit.
    """
    folder = _require_dir(Path(sd_folder), "Stable Diffusion")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device} was requested but CUDA is not available")
    compute_dtype = resolve_dtype(dtype, device)

    with quiet_progress_bars():
        unet = _load_unet(folder, compute_dtype)
        in_channels = int(unet.config.in_channels)
        vae = _load_vae(folder, compute_dtype, in_channels)
        text_encoder = _load_text_encoder(folder, compute_dtype)
        tokenizer = _load_tokenizer(folder)
        scheduler = _load_scheduler(folder)
    if int(text_encoder.config.hidden_size) != int(unet.config.cross_attention_dim):
        raise CheckpointError(
            f"{folder}: the text encoder's width {text_encoder.config.hidden_size} does not match the UNet's "
            f"cross_attention_dim {unet.config.cross_attention_dim}"
        )

    pixels_per_latent = 1 if vae is None else 2 ** (len(vae.config.block_out_channels) - 1)
    controlnets: dict[str, ControlNetModel] = {}
    requested: Mapping[str, str | Path | None] = {"edge": edge_controlnet, "depth": depth_controlnet}
    with quiet_progress_bars():
        for kind, path in requested.items():
            if path is not None:
                controlnets[kind] = _load_controlnet(kind, Path(path), compute_dtype, unet, pixels_per_latent)

    modules: list[torch.nn.Module] = [unet, text_encoder, *controlnets.values()]
    if vae is not None:
        modules.append(vae)
    for module in modules:  # already in compute_dtype (from_pretrained); casting again would warn
        _freeze(module.to(device=device))

    models = DiffusionModels(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=scheduler,
        controlnets=controlnets,
        dtype=compute_dtype,
        device=device,
        vae_scaling_factor=1.0 if vae is None else float(vae.config.scaling_factor),
        source=folder,
    )
    apply_memory_options(models, memory or MemoryOptions())
    return models
