"""A miniature Stable-Diffusion-1.5-layout folder with random weights, built from configs offline.

It has exactly the structure of the real thing (``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/``,
``scheduler/``, ``model_index.json``, plus ControlNet folders) so every code path of
:func:`~engine.guidance.models.load_diffusion_models` and :class:`~engine.guidance.guidance.Guidance` runs
in tests without a download, in about a second on a CPU. Later the embedded model pack trains these tiny
networks; until then they are random.

The tokenizer is a real CLIP byte-level BPE: the 256 byte symbols, their end-of-word variants, a few merges
spelling common prompt words, and CLIP's two special tokens.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import torch

from ..errors import ConfigError
from ..io.atomic import write_json, write_text
from .models import CONTROL_KINDS, quiet_progress_bars

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
END_OF_WORD = "</w>"

# Words that get merges of their own, so typical prompts tokenise into few tokens.
_VOCAB_WORDS = (
    "zombie", "head", "portrait", "of", "the", "photo", "person", "face", "statue", "pixar", "joker",
    "werewolf", "sketch", "style", "with",
)  # fmt: skip


@dataclass(frozen=True)
class TinyDiffusionSpec:
    """Sizes of the tiny models. ``image_size`` is the RGB size; latents are ``image_size / 4`` (or the
    image itself when ``pixel_space``: then there is no VAE and the UNet denoises RGB)."""

    image_size: int = 32
    latent_channels: int = 4
    unet_channels: tuple[int, ...] = (32, 64)
    unet_groups: int = 32
    attention_heads: int = 4
    vae_channels: tuple[int, ...] = (16, 32, 32)
    vae_groups: int = 8
    text_width: int = 32
    text_layers: int = 2
    text_heads: int = 4
    max_tokens: int = 77
    pixel_space: bool = False
    # Bigger (trained) variants: ResNet layers per UNet / VAE block, which UNet levels cross-attend to the
    # text (None: every level, the tiny default), the ControlNet conditioning embedding's channels (None:
    # 8, 16, … per halving) and extra words the tokenizer spells as single tokens.
    unet_layers: int = 1
    vae_layers: int = 1
    cross_attention_levels: tuple[bool, ...] | None = None
    controlnet_embedding_channels: tuple[int, ...] | None = None
    extra_words: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        total = self.vae_downsample * 2 ** (len(self.unet_channels) - 1)
        if self.image_size % total:
            raise ConfigError(f"image_size {self.image_size} must be divisible by {total} (VAE × UNet downsampling)")
        levels = self.cross_attention_levels
        if levels is not None and len(levels) != len(self.unet_channels):
            raise ConfigError(
                f"cross_attention_levels has {len(levels)} entries but the UNet has {len(self.unet_channels)} levels"
            )
        embedding = self.controlnet_embedding_channels
        if embedding is not None and 2 ** (len(embedding) - 1) != self.vae_downsample:
            raise ConfigError(
                f"controlnet_embedding_channels needs {self.vae_downsample.bit_length()} entries "
                f"(one per halving of the control image down to the latent size), got {embedding}"
            )

    @property
    def vae_downsample(self) -> int:
        return 1 if self.pixel_space else 2 ** (len(self.vae_channels) - 1)

    @property
    def latent_size(self) -> int:
        return self.image_size // self.vae_downsample

    @property
    def vocabulary_words(self) -> tuple[str, ...]:
        return _VOCAB_WORDS + tuple(w for w in self.extra_words if w not in _VOCAB_WORDS)


@dataclass(frozen=True)
class TinyDiffusionFolder:
    """Where :func:`build_tiny_diffusion_folder` put things."""

    sd_folder: Path
    controlnets: dict[str, Path] = field(default_factory=dict)
    spec: TinyDiffusionSpec = field(default_factory=TinyDiffusionSpec)

    @property
    def edge(self) -> Path | None:
        return self.controlnets.get("edge")

    @property
    def depth(self) -> Path | None:
        return self.controlnets.get("depth")


# ----------------------------------------------------------------------------------------------------------
# Tokenizer files.


def byte_symbols() -> list[str]:
    """The byte-level BPE alphabet: one printable unicode character per byte value, in byte order.

    Printable Latin-1 bytes stand for themselves; the remaining 68 (controls, space, a few others) are
    mapped to code points from 256 upwards, so no byte becomes whitespace or a control character. This is
    the mapping the ``tokenizers`` ByteLevel pre-tokenizer applies, so the vocabulary must use it too.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    printable_set = set(printable)
    symbols: dict[int, str] = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in printable_set:
            symbols[b] = chr(256 + extra)
            extra += 1
    return [symbols[b] for b in range(256)]


def _word_merges(word: str) -> list[tuple[str, str]]:
    """Left-to-right merges that spell ``word`` as one end-of-word token."""
    pieces = list(word[:-1]) + [word[-1] + END_OF_WORD]
    merges, current = [], pieces[0]
    for piece in pieces[1:]:
        merges.append((current, piece))
        current += piece
    return merges


def tiny_clip_vocabulary(words: Iterable[str] = _VOCAB_WORDS) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A CLIP-style BPE vocabulary (token → id) and merge list covering ``words``."""
    symbols = byte_symbols()
    tokens = symbols + [s + END_OF_WORD for s in symbols]
    merges: list[tuple[str, str]] = []
    known = set(tokens)
    for word in words:
        for left, right in _word_merges(word.lower()):
            if left + right not in known:
                merges.append((left, right))
                tokens.append(left + right)
                known.add(left + right)
    tokens += [BOS_TOKEN, EOS_TOKEN]
    return {token: index for index, token in enumerate(tokens)}, merges


def write_tiny_tokenizer(
    folder: Path, max_tokens: int = 77, words: Iterable[str] = _VOCAB_WORDS
) -> dict[str, int]:
    """Write ``vocab.json``, ``merges.txt`` and the tokenizer config of a tiny CLIP tokenizer; return the vocab."""
    vocab, merges = tiny_clip_vocabulary(words)
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "vocab.json", vocab)
    write_text(folder / "merges.txt", "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    special = {"bos_token": BOS_TOKEN, "eos_token": EOS_TOKEN, "pad_token": EOS_TOKEN, "unk_token": EOS_TOKEN}
    write_json(folder / "special_tokens_map.json", special)
    write_json(
        folder / "tokenizer_config.json",
        {"tokenizer_class": "CLIPTokenizer", "model_max_length": max_tokens, "do_lower_case": True, **special},
    )
    return vocab


# ----------------------------------------------------------------------------------------------------------
# Models.


def build_unet(spec: TinyDiffusionSpec):
    """A randomly initialised ``UNet2DConditionModel`` of ``spec``'s size (uses the global torch RNG)."""
    from diffusers import UNet2DConditionModel

    levels = spec.cross_attention_levels or (True,) * len(spec.unet_channels)
    down = tuple("CrossAttnDownBlock2D" if attend else "DownBlock2D" for attend in levels)
    up = tuple("CrossAttnUpBlock2D" if attend else "UpBlock2D" for attend in reversed(levels))
    return UNet2DConditionModel(
        sample_size=spec.latent_size,
        in_channels=3 if spec.pixel_space else spec.latent_channels,
        out_channels=3 if spec.pixel_space else spec.latent_channels,
        layers_per_block=spec.unet_layers,
        block_out_channels=spec.unet_channels,
        down_block_types=down,
        up_block_types=up,
        cross_attention_dim=spec.text_width,
        attention_head_dim=spec.attention_heads,
        norm_num_groups=spec.unet_groups,
    )


def build_vae(spec: TinyDiffusionSpec):
    """A randomly initialised ``AutoencoderKL`` of ``spec``'s size (SD 1.5's scaling factor until trained)."""
    from diffusers import AutoencoderKL

    blocks = len(spec.vae_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * blocks,
        up_block_types=("UpDecoderBlock2D",) * blocks,
        block_out_channels=spec.vae_channels,
        layers_per_block=spec.vae_layers,
        latent_channels=spec.latent_channels,
        norm_num_groups=spec.vae_groups,
        sample_size=spec.image_size,
        scaling_factor=0.18215,
    )


def build_text_encoder(spec: TinyDiffusionSpec, vocab: dict[str, int]):
    """A randomly initialised small ``CLIPTextModel`` for ``vocab`` (from :func:`tiny_clip_vocabulary`)."""
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        vocab_size=len(vocab),
        hidden_size=spec.text_width,
        intermediate_size=2 * spec.text_width,
        projection_dim=spec.text_width,
        num_hidden_layers=spec.text_layers,
        num_attention_heads=spec.text_heads,
        max_position_embeddings=spec.max_tokens,
        bos_token_id=vocab[BOS_TOKEN],
        eos_token_id=vocab[EOS_TOKEN],
        pad_token_id=vocab[EOS_TOKEN],
    )
    return CLIPTextModel(config)


def build_scheduler():
    """DDIM with Stable Diffusion 1.5's noise schedule and step settings."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="epsilon",
    )


def build_controlnet(unet, spec: TinyDiffusionSpec, randomize_outputs: bool = True):
    """A ControlNet copying ``unet``'s encoder; with ``randomize_outputs`` its zero convolutions are randomised.

    A freshly made ControlNet adds exactly zero residuals (its "zero convolutions"), which would make a
    random tiny ControlNet indistinguishable from none; random outputs let tests see its effect. Training
    starts from the zero convolutions instead (``randomize_outputs=False``), so the UNet is undisturbed.
    """
    from diffusers import ControlNetModel

    halvings = spec.vae_downsample.bit_length() - 1  # the control image is this many halvings larger
    embedding_channels = spec.controlnet_embedding_channels or tuple(8 * 2**i for i in range(halvings + 1))
    net = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=embedding_channels)
    if randomize_outputs:
        zero_convs = [*net.controlnet_down_blocks, net.controlnet_mid_block, net.controlnet_cond_embedding.conv_out]
        for conv in zero_convs:
            conv.reset_parameters()
    return net



def _model_index(spec: TinyDiffusionSpec) -> dict:
    import diffusers

    index = {
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": diffusers.__version__,
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": None if spec.pixel_space else ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", "DDIMScheduler"],
        "safety_checker": [None, None],
        "feature_extractor": [None, None],
        "requires_safety_checker": False,
    }
    return {k: v for k, v in index.items() if v is not None}


def _write_folder(root: Path, seed: int, controlnets: tuple[str, ...], spec: TinyDiffusionSpec) -> None:
    with quiet_progress_bars():
        _write_components(root, seed, controlnets, spec)


def _write_components(root: Path, seed: int, controlnets: tuple[str, ...], spec: TinyDiffusionSpec) -> None:
    vocab = write_tiny_tokenizer(root / "tokenizer", spec.max_tokens, spec.vocabulary_words)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = build_unet(spec)
        unet.save_pretrained(root / "unet", safe_serialization=True)
        if not spec.pixel_space:
            build_vae(spec).save_pretrained(root / "vae", safe_serialization=True)
        build_text_encoder(spec, vocab).save_pretrained(root / "text_encoder")
        for offset, kind in enumerate(controlnets, start=1):
            torch.manual_seed(seed + 1000 * offset)
            build_controlnet(unet, spec).save_pretrained(root / f"controlnet_{kind}", safe_serialization=True)
    build_scheduler().save_pretrained(root / "scheduler")
    write_json(root / "model_index.json", _model_index(spec))


def build_tiny_diffusion_folder(
    path: str | os.PathLike,
    seed: int = 0,
    controlnets: Iterable[str] = CONTROL_KINDS,
    spec: TinyDiffusionSpec | None = None,
    overwrite: bool = False,
) -> TinyDiffusionFolder:
    """Create a tiny SD-1.5-layout folder at ``path`` with random (seeded) weights; no downloads.

    ControlNets go to ``path/controlnet_<kind>`` (kinds ``"edge"``, ``"depth"``). The folder is built
    beside ``path`` and renamed into place, so an interrupted build leaves nothing behind. An existing
    non-empty ``path`` is an error unless ``overwrite``.
    """
    spec = spec or TinyDiffusionSpec()
    kinds = tuple(controlnets)
    unknown = [k for k in kinds if k not in CONTROL_KINDS]
    if unknown:
        raise ConfigError(f"controlnets: unknown kind(s) {unknown}; expected a subset of {CONTROL_KINDS}")
    dest = Path(path)
    if dest.exists():
        if not dest.is_dir():
            raise ConfigError(f"{dest} exists and is not a folder")
        if any(dest.iterdir()) and not overwrite:
            raise ConfigError(f"{dest} already exists and is not empty (pass overwrite=True to replace it)")
    _publish_folder(dest, lambda staging: _write_folder(staging, seed, kinds, spec))
    return _folder_result(dest, kinds, spec)


def write_diffusion_folder(
    path: str | os.PathLike,
    unet,
    text_encoder,
    spec: TinyDiffusionSpec,
    vae=None,
    controlnets: dict | None = None,
    weights_dtype: torch.dtype = torch.float32,
) -> TinyDiffusionFolder:
    """Write given (e.g. trained) modules as an SD-1.5-layout folder, atomically, like the tiny builder.

    ``controlnets`` maps a kind (``"edge"``, ``"depth"``) to its ControlNet, saved as
    ``path/controlnet_<kind>``. Weights are stored in ``weights_dtype`` (fp16 halves the size; loaders
    convert to their compute dtype). The tokenizer is rebuilt from ``spec`` and must be the one
    ``text_encoder`` was made for. An existing ``path`` is replaced only after the new folder is complete.
    """
    import copy

    controlnets = dict(controlnets or {})
    unknown = [k for k in controlnets if k not in CONTROL_KINDS]
    if unknown:
        raise ConfigError(f"controlnets: unknown kind(s) {unknown}; expected a subset of {CONTROL_KINDS}")
    if (vae is None) != spec.pixel_space:
        raise ConfigError("a VAE is required unless spec.pixel_space (and not allowed with it)")
    dest = Path(path)

    def save(module, folder: Path, **kwargs) -> None:
        copy.deepcopy(module).to("cpu", weights_dtype).save_pretrained(folder, **kwargs)

    def fill(staging: Path) -> None:
        with quiet_progress_bars():
            write_tiny_tokenizer(staging / "tokenizer", spec.max_tokens, spec.vocabulary_words)
            save(unet, staging / "unet", safe_serialization=True)
            if vae is not None:
                save(vae, staging / "vae", safe_serialization=True)
            save(text_encoder, staging / "text_encoder")
            for kind, net in controlnets.items():
                save(net, staging / f"controlnet_{kind}", safe_serialization=True)
            build_scheduler().save_pretrained(staging / "scheduler")
            write_json(staging / "model_index.json", _model_index(spec))

    _publish_folder(dest, fill)
    return _folder_result(dest, tuple(controlnets), spec)


def _publish_folder(dest: Path, fill) -> None:
    """Build a folder beside ``dest`` with ``fill(staging)``, then swap it into place: readers never see a
    half-written model folder, and a failed build leaves the old one (or nothing) behind."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; model folders are meant to be shared and shipped
    try:
        fill(staging)
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(staging, dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _folder_result(dest: Path, kinds: tuple[str, ...], spec: TinyDiffusionSpec) -> TinyDiffusionFolder:
    return TinyDiffusionFolder(sd_folder=dest, controlnets={kind: dest / f"controlnet_{kind}" for kind in kinds}, spec=spec)
