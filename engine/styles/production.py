"""Production with an approved style (``--style-id zombie@1``): verify, check the base generator, never train.

Why a separate step from :func:`engine.styles.library.verify_style`: the style's files being intact is not
enough. The batch inverts each input into the *base* generator and meshes the approved stylized generator at
that latent, so the base generator must be the one the style was made from; a different one would give
latents the approved weights were never tuned for. :func:`production_style` checks both before any model is
loaded, and :func:`production_licences` gives the outputs' licence chain: the models that made the style
(recorded at approval, so a production machine without the diffusion model still credits it) plus those
production itself loads.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

from .library import ApprovedStyle, StyleError, verify_style


def production_style(style_id: str, library: str | os.PathLike | None, base_generator: str,
                     pack_root: str | os.PathLike | None) -> ApprovedStyle:
    """The verified style, after checking that ``base_generator`` is the one it was approved on."""
    from ..heads.provenance import model_hashes

    style = verify_style(style_id, library)
    recorded = (style.record.get("models", {}).get("generator") or {})
    actual = model_hashes({"generator": base_generator}, pack_root).get("generator")
    if recorded.get("sha256") != actual:
        raise StyleError(f"style {style_id} was approved on the base generator {recorded.get('path')} "
                         f"(sha256 {str(recorded.get('sha256'))[:16]}…), but this run's generator is {base_generator} "
                         f"(sha256 {str(actual)[:16]}…); give --generator the style's base generator")
    return style


def production_licences(style: ApprovedStyle, loaded: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The style's recorded model licences, then those of models production loads that the style did not
    record (by role); each with its source."""
    out: list[dict[str, Any]] = []
    models: Mapping[str, Any] = style.record.get("models", {})
    for name, entry in models.items():
        out.append({"model": name, "licence": entry.get("licence", "unknown"), "attribution": entry.get("attribution", ""),
                    "source": f"approved style {style.style_id}: {entry.get('source', '')}",
                    "commercial_use": entry.get("commercial_use", "unknown")})
    return out + [r for r in loaded if r.get("model") not in models]


def style_summary(style: ApprovedStyle) -> dict[str, Any]:
    """What a production run records about the style it used (sidecar settings, head.json)."""
    r = style.record
    return {"id": style.style_id, "approved_by": r.get("approved_by"), "approved_at": r.get("approved_at"),
            "generator_sha256": r.get("files", {}).get("generator.safetensors", {}).get("sha256"),
            "folder": str(Path(style.folder))}
