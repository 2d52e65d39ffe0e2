"""Identity parameters of the procedural head world.

A head is described by a fixed-length vector of ``IDENTITY_DIM`` floats. The vector lives in a *normalised*
space where every entry is drawn from U[-1, 1] and 0 is an average head, so that a training script can
sample, interpolate and regress identities without caring about units. :func:`to_physical` maps each entry
linearly onto a physical range (centimetres, multipliers of a base size, or a 0..1 colour coordinate); the
SDF builder in :mod:`engine.world.sdf` and the shaders in :mod:`engine.world.styles` consume only the
physical values, and the styles may push those beyond the sampled range (a cartoon's oversized eyes).

Lengths are in centimetres of a real head; :data:`engine.world.sdf.WORLD_UNITS_PER_CM` converts them into the
generator's world units. The table :data:`IDENTITY_SPECS` is the single place that documents every entry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch
from torch import Tensor

from ..errors import ConfigError, InputError

# Physical values of a batch of identities, one (N,) tensor per entry name.
PhysicalIdentity = dict[str, Tensor]


@dataclass(frozen=True)
class ParamSpec:
    """One entry of the identity vector: its name, the physical range U[-1, 1] maps onto, and what it does."""

    name: str
    low: float
    high: float
    unit: str
    doc: str

    @property
    def centre(self) -> float:
        return 0.5 * (self.low + self.high)

    @property
    def half_range(self) -> float:
        return 0.5 * (self.high - self.low)


# The order of this table is the order of the vector; append new entries at the end so stored identities
# keep their meaning. "×" marks a multiplier of the base head's size.
IDENTITY_SPECS: tuple[ParamSpec, ...] = (
    ParamSpec("skull_width", 0.90, 1.10, "×", "left–right size of the cranium (and the hair cap on it)"),
    ParamSpec("skull_height", 0.90, 1.10, "×", "crown height above the brow"),
    ParamSpec("skull_depth", 0.92, 1.08, "×", "front–back length of the cranium"),
    ParamSpec("face_length", 0.90, 1.10, "×", "vertical stretch of the lower face (nose base, mouth, chin)"),
    ParamSpec("jaw_width", 0.82, 1.18, "×", "width of the jaw angles below the ears"),
    ParamSpec("chin_length", -0.8, 0.9, "cm", "how far the chin extends downwards"),
    ParamSpec("chin_protrusion", -0.9, 0.9, "cm", "how far the chin juts forwards"),
    ParamSpec("cheekbones", 0.6, 1.4, "×", "size of the cheekbone prominences"),
    ParamSpec("nose_length", 0.82, 1.2, "×", "bridge-to-tip length of the nose"),
    ParamSpec("nose_width", 0.78, 1.3, "×", "width of the nose tip and wings"),
    ParamSpec("nose_protrusion", -0.6, 0.8, "cm", "how far the nose tip sticks out of the face"),
    ParamSpec("eye_spacing", 0.88, 1.12, "×", "distance between the eyes"),
    ParamSpec("eye_size", 0.85, 1.15, "×", "eyeball radius and lid opening"),
    ParamSpec("eye_depth", -0.35, 0.35, "cm", "how deep the eyes sit in their sockets (positive = deeper)"),
    ParamSpec("brow_ridge", 0.6, 1.4, "×", "thickness of the bony ridge above the eyes"),
    ParamSpec("eyebrow_thickness", 0.25, 0.75, "cm", "half-height of the painted eyebrows"),
    ParamSpec("ear_size", 0.85, 1.18, "×", "height and width of the ears"),
    ParamSpec("ear_angle", 8.0, 32.0, "deg", "how far the ears stand out from the head"),
    ParamSpec("mouth_width", 0.85, 1.18, "×", "corner-to-corner width of the mouth"),
    ParamSpec("lip_thickness", 0.65, 1.4, "×", "fullness of both lips"),
    ParamSpec("neck_width", 0.85, 1.15, "×", "radius of the neck"),
    ParamSpec("hair_volume", 0.25, 2.6, "cm", "thickness of the hair cap over the skull"),
    ParamSpec("hair_length", 0.0, 16.0, "cm", "how far the hair falls below the nape (0 = short)"),
    ParamSpec("hair_fringe", -1.0, 1.0, "", "front hairline: −1 receded forehead, +1 fringe down to the brows"),
    ParamSpec("hair_top", 0.0, 1.0, "", "extra volume (a quiff) on top of the head"),
    ParamSpec("hair_curl", 0.0, 1.0, "", "waviness of the hair surface (0 = smooth)"),
    ParamSpec("hair_lightness", 0.0, 1.0, "", "hair colour from black (0) through brown to blond (1)"),
    ParamSpec("hair_warmth", 0.0, 1.0, "", "hair colour from ashy/neutral (0) to red/auburn (1)"),
    ParamSpec("skin_tone", 0.0, 1.0, "", "skin colour from deep brown (0) to very light (1)"),
    ParamSpec("skin_warmth", 0.0, 1.0, "", "skin undertone from olive/yellow (0) to pink/red (1)"),
    ParamSpec("eye_colour", 0.0, 1.0, "", "iris colour from blue (0) through green and hazel to dark brown (1)"),
    ParamSpec(
        "asymmetry", -1.0, 1.0, "",
        "signed strength of a fixed left/right asymmetry pattern (nose tip, eye and ear heights, jaw, parting);"
        " 0 gives an exactly mirror-symmetric head and −a is the mirror image of +a",
    ),
)

IDENTITY_DIM = len(IDENTITY_SPECS)
IDENTITY_NAMES: tuple[str, ...] = tuple(spec.name for spec in IDENTITY_SPECS)
IDENTITY_INDEX: dict[str, int] = {name: i for i, name in enumerate(IDENTITY_NAMES)}

# Samples of |asymmetry| are squashed towards 0 so most heads are close to mirror-symmetric.
_ASYMMETRY_SAMPLING_POWER = 2.0


def check_identity(identity: Tensor, name: str = "identity") -> Tensor:
    """Return ``identity`` as an (N, D) floating tensor, or raise :class:`InputError` naming ``name``."""
    if not isinstance(identity, Tensor):
        raise InputError(f"{name} must be a torch.Tensor of shape (N, {IDENTITY_DIM}), got {type(identity).__name__}")
    if identity.dim() == 1:
        identity = identity.unsqueeze(0)
    if identity.dim() != 2 or identity.shape[1] != IDENTITY_DIM:
        raise InputError(f"{name} must have shape (N, {IDENTITY_DIM}), got {tuple(identity.shape)}")
    if not identity.is_floating_point():
        raise InputError(f"{name} must be a floating tensor, got {identity.dtype}")
    if not bool(torch.isfinite(identity).all()):
        raise InputError(f"{name} holds NaN or infinite values")
    return identity


def sample_identities(
    n: int,
    generator: torch.Generator | None = None,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """(n, D) identities in the normalised space: every entry U[-1, 1], asymmetry concentrated near 0.

    Values are drawn on the generator's device and then moved, so a seed gives the same heads anywhere.
    """
    if int(n) < 1:
        raise ConfigError(f"sample_identities: n must be ≥ 1, got {n}")
    draw_device = generator.device if generator is not None else device
    values = torch.rand(int(n), IDENTITY_DIM, generator=generator, device=draw_device, dtype=dtype) * 2.0 - 1.0
    a = IDENTITY_INDEX["asymmetry"]
    values[:, a] = values[:, a].sign() * values[:, a].abs().pow(_ASYMMETRY_SAMPLING_POWER)
    return values.to(device) if device is not None else values


def neutral_identities(
    n: int = 1, *, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
) -> Tensor:
    """(n, D) zeros: the average, exactly symmetric head."""
    return torch.zeros(int(n), IDENTITY_DIM, device=device, dtype=dtype)


def mirror_identity(identity: Tensor) -> Tensor:
    """The identity of the mirror-image head (reflected about x = 0): only the asymmetry changes sign."""
    identity = check_identity(identity).clone()
    identity[:, IDENTITY_INDEX["asymmetry"]] *= -1.0
    return identity


def _spec_tables(like: Tensor) -> tuple[Tensor, Tensor]:
    centre = torch.tensor([s.centre for s in IDENTITY_SPECS], dtype=like.dtype, device=like.device)
    half = torch.tensor([s.half_range for s in IDENTITY_SPECS], dtype=like.dtype, device=like.device)
    return centre, half


def to_physical(identity: Tensor) -> PhysicalIdentity:
    """Map (N, D) normalised identities onto physical values: ``{name: (N,) tensor}`` (linear, extrapolating)."""
    identity = check_identity(identity)
    centre, half = _spec_tables(identity)
    physical = centre + half * identity
    return {name: physical[:, i] for i, name in enumerate(IDENTITY_NAMES)}


def from_physical(physical: Mapping[str, Tensor]) -> Tensor:
    """Inverse of :func:`to_physical`: (N, D) normalised identities from a complete physical mapping."""
    missing = [name for name in IDENTITY_NAMES if name not in physical]
    if missing:
        raise InputError(f"physical identity lacks entries {missing}")
    stacked = torch.stack([torch.as_tensor(physical[name]).reshape(-1) for name in IDENTITY_NAMES], dim=1)
    if not stacked.is_floating_point():
        stacked = stacked.float()
    centre, half = _spec_tables(stacked)
    return (stacked - centre) / half


@dataclass(frozen=True)
class IdentityParams:
    """A batch of identities with named access: ``IdentityParams(values).nose_length`` is the physical (N,) value.

    ``values`` is the (N, D) normalised vector (the form training code stores and samples); attribute access
    by an entry name from :data:`IDENTITY_SPECS` returns the physical value, ``normalised(name)`` the raw one.
    """

    values: Tensor

    def __post_init__(self) -> None:
        object.__setattr__(self, "values", check_identity(self.values, "IdentityParams.values"))

    dim = IDENTITY_DIM
    names = IDENTITY_NAMES
    specs = IDENTITY_SPECS

    @classmethod
    def sample(cls, n: int, generator: torch.Generator | None = None, **kwargs) -> "IdentityParams":
        return cls(sample_identities(n, generator, **kwargs))

    @classmethod
    def neutral(cls, n: int = 1, **kwargs) -> "IdentityParams":
        return cls(neutral_identities(n, **kwargs))

    @classmethod
    def index(cls, name: str) -> int:
        if name not in IDENTITY_INDEX:
            raise ConfigError(f"unknown identity entry {name!r}; known: {', '.join(IDENTITY_NAMES)}")
        return IDENTITY_INDEX[name]

    def __len__(self) -> int:
        return int(self.values.shape[0])

    def normalised(self, name: str) -> Tensor:
        return self.values[:, self.index(name)]

    def physical(self) -> PhysicalIdentity:
        return to_physical(self.values)

    def replace(self, **normalised_values: float | Tensor) -> "IdentityParams":
        """A copy with some entries set (in the normalised space), e.g. ``replace(asymmetry=0.0)``."""
        values = self.values.clone()
        for name, value in normalised_values.items():
            values[:, self.index(name)] = torch.as_tensor(value, dtype=values.dtype, device=values.device)
        return IdentityParams(values)

    def __getattr__(self, name: str) -> Tensor:
        if name in IDENTITY_INDEX:
            spec = IDENTITY_SPECS[IDENTITY_INDEX[name]]
            return spec.centre + spec.half_range * self.values[:, IDENTITY_INDEX[name]]
        raise AttributeError(name)
