"""The approved-style library: a stylized generator frozen as a named, versioned style for production.

Why: a studio rolls a style out in stages — proof of concept, quality check, fixed production settings. Until
now a "style" was a cache folder named by a hash, and every batch could quietly retrain it. Here a person
approves one finished stylization run as ``zombie@1`` (the next approval of that name is ``zombie@2``);
production names that id (``--style-id zombie@1``), loads exactly the approved weights and never trains.

Layout of a library (default ``<engine data dir>/styles``: :func:`library_root`)::

    <library>/<name>/<version>/style.json             the record (below)
    <library>/<name>/<version>/generator.safetensors   the stylized generator, copied from the run
    <library>/<name>/<version>/generator.json

``style.json`` holds the id, status (``approved`` / ``retired``), approver and date, the run it came from
(its checkpoint step), prompt, method and the full stylization settings, the models it was made with
(SHA-256, licence and attribution of the base generator, diffusion model, ControlNets), the scores the run
measured (identity, diversity, style, fairness — what a scores file gives; ``missing`` lists the rest, they
are not invented), the SHA-256 and size of every file, and ``record_sha256``, a hash of the record itself.

**Refusals** (:func:`verify_style`, used by production before anything loads; each error names the file):
an id not of the form ``name@N``; a style not in the library; a retired style; a ``style.json`` edited by hand
(record hash); a file whose SHA-256 is not the approved one; a file in the folder that the record does not list
(an unapproved file); a missing file; a symbolic link. The hashes catch accidents and edits, not a determined
attacker who also rewrites ``style.json`` (that needs a signing key the project does not have; see README).

Approval is atomic: the version folder is assembled in a staging folder inside the library and renamed into
place; two people approving the same name at once get two different versions.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from ..errors import ConfigError, EngineError
from ..io.atomic import write_json
from ..io.untrusted import read_json

STYLE_FORMAT = "head-stylizer-style"
STYLE_SCHEMA = 1
RECORD = "style.json"
GENERATOR_FILES = ("generator.safetensors", "generator.json")
LIBRARY_ENV = "HEAD_STYLIZER_STYLES"
DATA_ENV = "HEAD_STYLIZER_DATA"
APPROVED, RETIRED = "approved", "retired"
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
_ID = re.compile(r"^([a-z0-9][a-z0-9_-]{0,63})@([1-9][0-9]{0,5})$")
SCORE_KEYS = ("identity", "diversity", "style", "fairness")


class StyleError(ConfigError):
    """A style id, library or style folder that production must refuse (the message names the file)."""


class StyleRetired(StyleError):
    """The style was retired: production refuses it."""


class StyleTampered(StyleError):
    """A file of an approved style is modified, missing, or not part of the approval."""


# --------------------------------------------------------------------------------------------------
# Where the library is
# --------------------------------------------------------------------------------------------------
def engine_data_dir() -> Path:
    """The engine's per-user data folder: ``$HEAD_STYLIZER_DATA``, else the platform's user data folder
    (``$XDG_DATA_HOME`` or ``~/.local/share`` on Linux, ``~/Library/Application Support`` on macOS,
    ``%LOCALAPPDATA%`` on Windows) + ``head-stylizer``."""
    if os.environ.get(DATA_ENV):
        return Path(os.environ[DATA_ENV]).expanduser()
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    else:
        base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "head-stylizer"


def library_root(library: str | os.PathLike | None = None) -> Path:
    """The style library: ``library`` if given (``--style-library``), else ``$HEAD_STYLIZER_STYLES``, else
    ``<engine data dir>/styles``."""
    if library:
        return Path(library).expanduser()
    if os.environ.get(LIBRARY_ENV):
        return Path(os.environ[LIBRARY_ENV]).expanduser()
    return engine_data_dir() / "styles"


def parse_style_id(style_id: str) -> tuple[str, int]:
    """``"zombie@1"`` → ``("zombie", 1)``; anything else is a :class:`StyleError` saying the form."""
    match = _ID.match(str(style_id).strip())
    if not match:
        raise StyleError(f"style id {style_id!r} is not of the form name@version (e.g. zombie@1; names are "
                         "lower-case letters, digits, '-' and '_'); `engine style list` shows the approved ones")
    return match.group(1), int(match.group(2))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def record_hash(record: Mapping[str, Any]) -> str:
    """SHA-256 of a record without its own ``record_sha256`` (canonical JSON)."""
    body = {k: v for k, v in record.items() if k != "record_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _host_user() -> str | None:
    """The account the approval ran under (next to the approver's name, which the person types)."""
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return None


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


# --------------------------------------------------------------------------------------------------
# Approve
# --------------------------------------------------------------------------------------------------
def find_run_checkpoint(run: str | os.PathLike):
    """The finished checkpoint of a stylization run: a run folder (``latest`` pointer), one of its
    ``checkpoints/step_N`` folders, or a head/batch cache folder holding exactly one run under ``stylized/``."""
    from ..stylize.training_state import LATEST_POINTER, read_latest, read_training_state

    run = Path(run)
    if not run.is_dir():
        raise StyleError(f"{run}: stylization run folder not found")
    if (run / "state.json").is_file():
        state = read_training_state(run)
    elif (run / LATEST_POINTER).is_file():
        state = read_latest(run)
    else:
        candidates = sorted(p for p in (run / "stylized").glob("*") if (p / LATEST_POINTER).is_file()) \
            if (run / "stylized").is_dir() else []
        if len(candidates) != 1:
            found = f"{len(candidates)} runs under {run / 'stylized'}" if candidates else "no 'latest' pointer"
            raise StyleError(f"{run}: not a stylization run ({found}); give the run folder itself "
                             "(the one with 'latest' and checkpoints/)")
        state = read_latest(candidates[0])
    if state is None:
        raise StyleError(f"{run}: the run has no checkpoint yet")
    if state.step < state.config.steps:
        raise StyleError(f"{state.folder}: the run stopped at step {state.step} of {state.config.steps}; finish it "
                         "(engine stylize --resume) before approving it")
    generator_json = state.folder / "generator.json"
    meta = read_json(generator_json, "generator metadata")
    if "head_planes" in (meta.get("tensor_names") or []):
        raise StyleError(f"{generator_json}: a head-mode run stylizes one person's own field, not a generator; "
                         "only a generator run can be an approved style")
    return state


def _effective_models(config) -> dict[str, str | None]:
    """The models a run was made with, as the training loop resolved them (ControlNets default to the
    diffusion folder's ``controlnet_<kind>``)."""
    models: dict[str, str | None] = {"generator": config.generator, "diffusion": config.diffusion}
    for kind in ("depth", "edge"):
        given = getattr(config, f"{kind}_controlnet")
        default = Path(config.diffusion) / f"controlnet_{kind}" if config.diffusion else None
        models[f"{kind}_controlnet"] = given or (str(default) if default is not None and default.is_dir() else None)
    if getattr(config, "lpips_path", None):
        models["lpips"] = config.lpips_path
    return models


def _dig(data: Mapping[str, Any], *keys: str) -> Any:
    for source in (data, data.get("scores") if isinstance(data.get("scores"), Mapping) else {}):
        for key in keys:
            if key in source and source[key] is not None:
                return source[key]
    return None


def read_scores(path: str | os.PathLike | None, generator_sha256: str) -> dict[str, Any]:
    """The scores to record from a file the run's evaluation wrote (``engine demo``'s ``metrics.json``,
    ``engine head``'s ``head.json``, a bench JSON): identity, diversity, style, fairness — what is there;
    ``missing`` names the rest. A file that names a stylized generator other than this one is refused."""
    if path is None:
        return {"missing": list(SCORE_KEYS), "note": "no scores file given (--scores): nothing was measured for "
                                                     "this approval"}
    path = Path(path)
    data = read_json(path, "scores file")
    if not isinstance(data, dict):
        raise StyleError(f"{path}: scores file must be a JSON object")
    measured = data.get("stylized_generator") or data.get("generator")
    note = ""
    if isinstance(measured, str) and Path(measured).is_file():
        if _sha256(Path(measured)) != generator_sha256:
            raise StyleError(f"{path}: these scores were measured on {measured}, a different generator from the "
                             "run being approved")
    else:
        note = "the scores file does not name a generator file that could be checked against this run"
    identity = {k: _dig(data, k) for k in ("identity_similarity_mean", "identity_similarity", "reid_top1",
                                            "identity_margin_mean", "reid_chance") if _dig(data, k) is not None}
    if isinstance(identity.get("identity_similarity"), list):  # per-subject lists stay in the source file
        identity.pop("identity_similarity")
    scores: dict[str, Any] = {
        "identity": identity or None,
        "diversity": _dig(data, "diversity_ratio"),
        "style": _dig(data, "style_score_after_mean", "style_score"),
        "fairness": _dig(data, "fairness"),
    }
    out = {k: v for k, v in scores.items() if v is not None}
    out["missing"] = [k for k in SCORE_KEYS if scores[k] is None]
    out["source"] = {"file": path.name, "sha256": _sha256(path)}
    if note:
        out["note"] = note
    return out


@dataclass(frozen=True)
class Approval:
    """What ``engine style approve`` is asked (the run, the name, who approves, the evidence)."""

    run: str
    name: str
    approver: str
    scores: str | None = None
    note: str = ""
    library: str | None = None

    def validate(self) -> "Approval":
        if not _NAME.match(self.name):
            raise StyleError(f"style name {self.name!r}: use lower-case letters, digits, '-' and '_' (≤ 64, e.g. zombie)")
        if not self.approver.strip():
            raise StyleError("--approver is empty: an approval names the person who approved it")
        return self


def approve_style(approval: Approval) -> dict[str, Any]:
    """Freeze the run as the next version of ``approval.name``; returns the record written."""
    from ..heads.licences import model_licences
    from ..heads.provenance import model_hashes
    from ..pack import pack_root

    approval.validate()
    state = find_run_checkpoint(approval.run)
    library = library_root(approval.library)
    library.mkdir(parents=True, exist_ok=True)
    generator = state.folder / GENERATOR_FILES[0]
    files = {name: {"sha256": _sha256(state.folder / name), "bytes": (state.folder / name).stat().st_size}
             for name in GENERATOR_FILES}
    scores = read_scores(approval.scores, files[GENERATOR_FILES[0]]["sha256"])
    models = _effective_models(state.config)
    pack = pack_root()
    hashes = model_hashes(models, pack)
    licences = {r["model"]: r for r in model_licences(models, pack)}
    config = state.config.to_dict()
    record: dict[str, Any] = {
        "format": STYLE_FORMAT,
        "schema": STYLE_SCHEMA,
        "name": approval.name,
        "status": APPROVED,
        "approved_by": approval.approver.strip(),
        "approved_at": _now(),
        "approved_on_host_user": _host_user(),
        "note": approval.note,
        "source_run": {"checkpoint": str(state.folder.resolve()), "step": state.step},
        "prompt": state.config.prompt,
        "negative_prompt": state.config.negative_prompt,
        "method": state.config.distill.method,
        "settings": config,
        "models": {name: {"path": str(path), "sha256": hashes.get(name), **{k: licences[name][k] for k in
                          ("licence", "attribution", "source", "commercial_use")}}
                   for name, path in models.items() if path},
        "scores": scores,
        "files": files,
    }
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=library))
    try:
        for name in GENERATOR_FILES:
            shutil.copyfile(state.folder / name, staging / name)
            if _sha256(staging / name) != files[name]["sha256"]:
                raise StyleError(f"{state.folder / name}: changed while it was being copied; approve again")
        target_parent = library / approval.name
        target_parent.mkdir(exist_ok=True)
        for _attempt in range(100):
            version = 1 + max((int(p.name) for p in target_parent.iterdir() if p.name.isdigit()), default=0)
            record.update(id=f"{approval.name}@{version}", version=version)
            record["record_sha256"] = record_hash(record)
            write_json(staging / RECORD, record)
            try:
                os.rename(staging, target_parent / str(version))  # atomic; fails if another approval took it
                return record
            except OSError:
                if not (target_parent / str(version)).exists():
                    raise
        raise StyleError(f"{target_parent}: could not claim a new version folder")
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


# --------------------------------------------------------------------------------------------------
# Read, list, retire, verify
# --------------------------------------------------------------------------------------------------
def style_folder(style_id: str, library: str | os.PathLike | None = None) -> Path:
    name, version = parse_style_id(style_id)
    return library_root(library) / name / str(version)


def _known_ids(library: Path) -> list[str]:
    if not library.is_dir():
        return []
    return sorted((f"{d.name}@{v.name}" for d in library.iterdir() if d.is_dir() and _NAME.match(d.name)
                   for v in d.iterdir() if v.is_dir() and v.name.isdigit()), key=_id_sort_key)


def _id_sort_key(style_id: str) -> tuple[str, int]:
    name, _, version = style_id.partition("@")
    return name, int(version) if version.isdigit() else 0


def read_record(style_id: str, library: str | os.PathLike | None = None) -> dict[str, Any]:
    """A style's ``style.json``, checked for form and for hand edits (record hash)."""
    root = library_root(library)
    folder = style_folder(style_id, root)
    path = folder / RECORD
    if not path.is_file():
        known = _known_ids(root)
        raise StyleError(f"style {style_id} is not in the library {root} ("
                         + (f"approved there: {', '.join(known)}" if known else "the library is empty") + ")")
    if path.is_symlink():
        raise StyleTampered(f"{path}: a symbolic link, not the approved record")
    record = read_json(path, "style record")
    if not isinstance(record, dict) or record.get("format") != STYLE_FORMAT:
        raise StyleTampered(f"{path}: not a {STYLE_FORMAT} record")
    if record.get("record_sha256") != record_hash(record):
        raise StyleTampered(f"{path}: modified after approval (its record hash does not match); production "
                            "refuses it — approve the run again as a new version")
    if record.get("id") != style_id:
        raise StyleTampered(f"{path}: records id {record.get('id')!r}, but lies in the folder of {style_id}")
    return record


@dataclass(frozen=True)
class ApprovedStyle:
    """A verified approved style: its record and the generator file production loads."""

    style_id: str
    folder: Path
    record: dict[str, Any]

    @property
    def generator(self) -> Path:
        return self.folder / GENERATOR_FILES[0]


def verify_style(style_id: str, library: str | os.PathLike | None = None) -> ApprovedStyle:
    """Everything production checks before it loads a style (see the module docstring); raises with the file."""
    record = read_record(style_id, library)
    folder = style_folder(style_id, library)
    if record.get("status") == RETIRED:
        raise StyleRetired(f"style {style_id} was retired on {record.get('retired_at')} by {record.get('retired_by')} "
                           f"({record.get('retire_reason') or 'no reason given'}); production refuses retired styles "
                           f"({folder / RECORD})")
    if record.get("status") != APPROVED:
        raise StyleError(f"{folder / RECORD}: status {record.get('status')!r} is not approved")
    listed = record.get("files")
    if not isinstance(listed, dict) or set(listed) != set(GENERATOR_FILES):
        raise StyleTampered(f"{folder / RECORD}: the record does not list the style's files")
    for entry in sorted(folder.iterdir()):
        if entry.name == RECORD:
            continue
        if entry.name not in listed:
            raise StyleTampered(f"{entry}: not part of the approved style {style_id} (an unapproved file); "
                                "remove it or approve a new version")
    for name, expected in sorted(listed.items()):
        path = folder / name
        if path.is_symlink() or not path.is_file():
            raise StyleTampered(f"{path}: " + ("a symbolic link" if path.is_symlink() else "missing")
                                + f"; style {style_id} is incomplete")
        actual = _sha256(path)
        if actual != expected.get("sha256"):
            raise StyleTampered(f"{path}: modified since style {style_id} was approved (sha256 {actual[:16]}…, "
                                f"approved {str(expected.get('sha256'))[:16]}…); production refuses it")
    return ApprovedStyle(style_id, folder, record)


def list_styles(library: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """One summary per version in the library (``problem`` set for a record that cannot be read)."""
    root = library_root(library)
    out = []
    for style_id in _known_ids(root):
        try:
            record = read_record(style_id, root)
            out.append({"id": style_id, "status": record.get("status"), "prompt": record.get("prompt"),
                        "approved_by": record.get("approved_by"), "approved_at": record.get("approved_at"),
                        "retired_at": record.get("retired_at"), "problem": None})
        except EngineError as exc:
            out.append({"id": style_id, "status": "unreadable", "prompt": None, "approved_by": None,
                        "approved_at": None, "retired_at": None, "problem": str(exc)})
    return out


def retire_style(style_id: str, by: str, reason: str, library: str | os.PathLike | None = None) -> dict[str, Any]:
    """Mark a style retired (kept for traceability of what it made; production refuses it from now on)."""
    if not by.strip():
        raise StyleError("--by is empty: a retirement names the person who retired the style")
    record = read_record(style_id, library)
    if record.get("status") == RETIRED:
        raise StyleError(f"style {style_id} is already retired (on {record.get('retired_at')})")
    record.update(status=RETIRED, retired_by=by.strip(), retired_at=_now(), retire_reason=reason.strip())
    record["record_sha256"] = record_hash(record)
    write_json(style_folder(style_id, library) / RECORD, record)
    return record
