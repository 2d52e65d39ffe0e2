"""Named style presets: what the panel's preset menu and ``--style-preset`` mean.

A preset has two prompts: the one written for full-size Stable Diffusion 1.5 models (what artists know
from the paper: "Pixar", "Joker", …) and, where one exists, the prompt of the embedded pack's world style
that plays the same role (the pack's tiny diffusion model was trained on six world styles only: photo,
statue, zombie, cartoon, sketch, gold). Presets without an embedded counterpart still run on the pack —
the text goes to its text encoder like any prompt — but the result is not meaningful, so the pipeline warns.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError


@dataclass(frozen=True)
class StylePreset:
    name: str
    label: str
    prompt: str  # for full-size Stable Diffusion models
    embedded_style: str | None  # the world style the embedded pack was trained on, if any
    embedded_prompt: str | None
    # Stylization steps on the embedded pack when the user gives none (None: the pipeline's default, 40). Set
    # from the quality bench's curves: zombie reaches its style by step 20 (style 0.91, margin 0.74 on 16 unseen
    # heads) and only loses identity after it (0.86 / 0.67 at 40); statue needs 40.
    embedded_steps: int | None = None


STYLE_PRESETS: dict[str, StylePreset] = {
    p.name: p
    for p in (
        StylePreset("joker", "Joker", "a portrait of the Joker, green hair, white face paint, red lips", None, None),
        StylePreset("pixar", "Pixar", "a Pixar style 3D cartoon character head", "cartoon", "a cartoon head"),
        StylePreset("zombie", "Zombie", "a zombie head, rotten green skin, highly detailed", "zombie", "a zombie head",
                    embedded_steps=20),
        StylePreset("statue", "Statue", "a white marble statue head, greek sculpture", "statue", "a marble statue head"),
        StylePreset("werewolf", "Werewolf", "a werewolf head, fur, fangs, highly detailed", None, None),
        StylePreset("sketch", "Sketch", "a pencil sketch portrait of a head", "sketch", "a pencil sketch of a head"),
        StylePreset("gold", "Gold", "a golden statue head, polished metal", "gold", "a golden statue head"),
    )
}


def get_style_preset(name: str) -> StylePreset:
    preset = STYLE_PRESETS.get(name.lower())
    if preset is None:
        raise ConfigError(f"unknown style preset {name!r}; choose one of {', '.join(STYLE_PRESETS)}")
    return preset


def preset_prompt(name: str, embedded: bool) -> tuple[str, str | None]:
    """(prompt, warning or None) of preset ``name`` for the embedded pack (``embedded``) or real SD models."""
    preset = get_style_preset(name)
    if not embedded:
        return preset.prompt, None
    if preset.embedded_prompt is None:
        known = ", ".join(p.name for p in STYLE_PRESETS.values() if p.embedded_style)
        return preset.prompt, (
            f"the embedded pack was not trained on the {preset.label!r} style (it knows {known}); "
            "point the preferences at real Stable Diffusion weights for this preset"
        )
    return preset.embedded_prompt, None
