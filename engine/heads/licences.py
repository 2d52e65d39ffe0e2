"""Which licence each model of an output's chain is under, who must be credited, and whether it allows
commercial use.

Why: a studio ships what the batch makes. A head made with a generator whose licence forbids commercial use
(PanoHead's checkpoint embeds EG3D's network code, under NVIDIA's non-commercial Source Code License, and was
trained on FFHQ-F, whose images are CC BY-NC-SA; a diffusers folder whose model card says ``cc-by-nc-4.0``)
must say so in the file itself, not only in someone's memory. So every output records, per model:

* ``licence`` and ``attribution``, read from, in this order:
  1. the embedded pack's ``manifest.json`` (``licence``: the pack was trained by this project's scripts),
     for any model inside the pack folder;
  2. a model card beside the model: ``README.md`` YAML front matter (``license:``, ``license_name:``, as the
     Hugging Face Hub and diffusers write it) in the model's folder or, for a file, the folder holding it;
  3. the model manager's ``models.json`` in the folder above (what ``engine models download`` recorded:
     licence and attribution of the repository it fetched);
  4. a PanoHead ``.pkl`` checkpoint (:data:`PANOHEAD`);
  5. otherwise ``unknown`` — recorded as unknown, never guessed;
* ``source``: where 1–5 found it, so a reviewer can check;
* ``commercial_use``: ``restricted`` (a non-commercial or research-only licence), ``allowed``, or
  ``unknown`` (:func:`commercial_use`).

:func:`chain_commercial_use` folds them into the output's flag, and :func:`copyright_notice` into the text
that goes into glTF ``asset.copyright``. Model cards are untrusted text: only the front matter's top-level
``key: value`` lines are read (no YAML loader, no code), within a size limit.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

MODEL_CARD = "README.md"
MODELS_MANIFEST = "models.json"  # written by engine/app/models.py beside the downloaded folders
_CARD_MAX_BYTES = 256 * 1024

# PanoHead's checkpoint (An et al., CVPR 2023). The repository's badge says CC BY 4.0, but the .pkl carries
# EG3D's network code (NVIDIA Source Code License: research or evaluation only) and the network was trained on
# FFHQ-F (FFHQ images are CC BY-NC-SA 4.0; K-Hairstyle is licensed for non-commercial research): treated as
# restricting commercial use until the weights' own terms say otherwise.
PANOHEAD = {
    "licence": "CC-BY-4.0 (repository); the checkpoint embeds EG3D code under the NVIDIA Source Code License "
               "(non-commercial) and was trained on FFHQ-F (CC BY-NC-SA 4.0 images)",
    "attribution": "PanoHead: Geometry-Aware 3D Full-Head Synthesis in 360° — Sizhe An, Hongyi Xu, Yichun Shi, "
                   "Guoxian Song, Umit Y. Ogras, Linjie Luo (CVPR 2023)",
    "commercial_use": "restricted",
}

# Licence identifiers (lower case, SPDX or Hub spelling) and the phrases that mark a non-commercial licence.
_RESTRICTING = re.compile(r"(\bnc\b|-nc\b|-nc-|non-?commercial|research[- ]only|nvidia source code licen[cs]e|"
                          r"evaluation only|nvidia-license|llama2|\bnc-sa\b)", re.IGNORECASE)
_ALLOWING = re.compile(r"^(mit|apache-2\.0|bsd-[23]-clause|gpl-[23]\.0(-or-later|-only)?|lgpl-[23]\.[01](-or-later)?|"
                       r"mpl-2\.0|cc0-1\.0|cc-by-4\.0|cc-by-sa-4\.0|unlicense|creativeml-openrail-m|openrail|"
                       r"openrail\+\+|openrail-m|bigscience-openrail-m|creativeml openrail-m)$", re.IGNORECASE)


@dataclass(frozen=True)
class ModelLicence:
    """One model's licence as recorded in provenance (see the module docstring)."""

    model: str  # its role: generator, diffusion, depth_controlnet, …
    licence: str
    attribution: str
    source: str
    commercial_use: str  # "restricted" | "allowed" | "unknown"

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def commercial_use(licence: str) -> str:
    """``restricted`` for a licence that forbids commercial use, ``allowed`` for a known permissive or
    use-restricted-but-commercial one (the OpenRAIL family allows commercial use under its use rules),
    ``unknown`` otherwise."""
    text = licence.strip()
    if not text or text.lower() == "unknown":
        return "unknown"
    if _RESTRICTING.search(text):
        return "restricted"
    return "allowed" if _ALLOWING.match(text) else "unknown"


def card_front_matter(card: Path) -> dict[str, str]:
    """Top-level ``key: value`` pairs of a model card's YAML front matter (between the leading ``---`` lines);
    {} when the card has none or cannot be read. Quotes around values are dropped; lists and nested keys are
    skipped (``license`` is a scalar on the Hub)."""
    try:
        with open(card, "rb") as fh:
            text = fh.read(_CARD_MAX_BYTES).decode("utf-8", errors="replace")
    except OSError:
        return {}
    lines = text.splitlines()
    if not lines or lines[0].strip() != "---":
        return {}
    out: dict[str, str] = {}
    for line in lines[1:]:
        if line.strip() in ("---", "..."):
            return out
        match = re.match(r"^([A-Za-z_][A-Za-z0-9_-]*):\s*(.*?)\s*$", line)
        if match and match.group(2) and not match.group(2).startswith(("[", "{", "|", ">")):
            out[match.group(1)] = match.group(2).strip("'\"")
    return {}  # no closing line: not front matter


def _pack_licence(path: Path, pack_root: Path | None) -> dict[str, str] | None:
    if pack_root is None or not (pack_root / "manifest.json").is_file():
        return None
    try:
        inside = path.resolve() == pack_root.resolve() or pack_root.resolve() in path.resolve().parents
    except OSError:
        return None
    if not inside:
        return None
    try:
        manifest = json.loads((pack_root / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    entry = manifest.get("licence")
    if not isinstance(entry, Mapping) or not entry.get("licence"):
        return {"licence": "unknown", "attribution": f"{manifest.get('name', 'model pack')} {manifest.get('version', '')}".strip(),
                "source": f"{pack_root.name}/manifest.json (no licence entry)"}
    return {"licence": str(entry["licence"]), "attribution": str(entry.get("attribution", "")),
            "source": f"{pack_root.name}/manifest.json"}


def _card_licence(path: Path) -> dict[str, str] | None:
    folder = path if path.is_dir() else path.parent
    card = folder / MODEL_CARD
    if not card.is_file():
        return None
    meta = card_front_matter(card)
    licence = meta.get("license") or meta.get("licence")
    if not licence:
        return None
    if licence.lower() == "other" and meta.get("license_name"):
        licence = meta["license_name"]
    attribution = meta.get("attribution") or meta.get("model_creator") or meta.get("base_model") or folder.name
    return {"licence": licence, "attribution": attribution, "source": f"{folder.name}/{MODEL_CARD} front matter"}


def _manager_licence(path: Path) -> dict[str, str] | None:
    """The model manager's record for a folder it downloaded (``<models>/models.json``, keyed by model)."""
    folder = path if path.is_dir() else path.parent
    manifest = folder.parent / MODELS_MANIFEST
    if not manifest.is_file():
        return None
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    for key, entry in (data.items() if isinstance(data, dict) else ()):
        if isinstance(entry, Mapping) and entry.get("licence") and str(entry.get("folder", key)) == folder.name:
            return {"licence": str(entry["licence"]), "attribution": str(entry.get("attribution", "")),
                    "source": f"{MODELS_MANIFEST} ({entry.get('repo_id', key)})"}
    return None


def model_licence(model: str, path: str | None, pack_root: str | Path | None = None) -> ModelLicence | None:
    """The licence of one model (see the module docstring for the order); None for no model."""
    if not path:
        return None
    p = Path(path)
    if not p.exists():  # a random-weight preset name (tests), not a file
        return ModelLicence(model, "unknown", f"preset {path}", "preset (no file)", "unknown")
    found = (_pack_licence(p, Path(pack_root) if pack_root else None) or _card_licence(p) or _manager_licence(p))
    if found is None and p.suffix.lower() == ".pkl":
        return ModelLicence(model, PANOHEAD["licence"], PANOHEAD["attribution"], "PanoHead checkpoint (.pkl)",
                            PANOHEAD["commercial_use"])
    if found is None:
        return ModelLicence(model, "unknown", p.name, "no licence found (no pack manifest, model card or models.json)", "unknown")
    return ModelLicence(model, found["licence"], found["attribution"], found["source"], commercial_use(found["licence"]))


def model_licences(models: Mapping[str, str | None], pack_root: str | Path | None = None) -> list[dict[str, str]]:
    """Provenance's ``licences`` list: one record per given model, in the order given."""
    out = []
    for name, path in models.items():
        record = model_licence(name, path, pack_root)
        if record is not None:
            out.append(record.to_dict())
    return out


def chain_commercial_use(licences: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The output's flag: ``restricted`` when any model restricts commercial use (``restricted_by`` names
    them), else ``unknown`` when any licence is unknown (``unknown`` names them), else ``allowed``."""
    records = list(licences)
    restricted = [str(r["model"]) for r in records if r.get("commercial_use") == "restricted"]
    unknown = [str(r["model"]) for r in records if r.get("commercial_use") not in ("restricted", "allowed")]
    status = "restricted" if restricted else ("unknown" if unknown else "allowed")
    return {"status": status, "restricted_by": restricted, "unknown": unknown}


def copyright_notice(licences: Iterable[Mapping[str, Any]], tool: str, version: str, style_id: str | None = None) -> str:
    """The text for glTF ``asset.copyright``: the tool, the approved style, each model's attribution and licence,
    and a NOT FOR COMMERCIAL USE line when the chain restricts it."""
    records = list(licences)
    parts = [f"Made with {tool} {version}" + (f", approved style {style_id}" if style_id else "") + "."]
    credits = [f"{r.get('attribution') or r.get('model')} ({r.get('licence', 'unknown')})" for r in records]
    if credits:
        parts.append("Models: " + "; ".join(dict.fromkeys(credits)) + ".")
    flag = chain_commercial_use(records)
    if flag["status"] == "restricted":
        parts.append("NOT FOR COMMERCIAL USE: " + ", ".join(flag["restricted_by"]) + " restrict(s) commercial use.")
    elif flag["status"] == "unknown":
        parts.append("Licence unknown for: " + ", ".join(flag["unknown"]) + ".")
    return " ".join(parts)
