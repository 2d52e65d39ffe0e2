"""Head mode in the pipeline: an artist's mesh becomes a single-head field, fitted once and cached.

:func:`fitted_head_field` takes the mesh as :func:`engine.heads.head_input.read_head_mesh` reads it (untrusted
input: ply, obj, glb/gltf, mesh npz; refused when it has no surface that encloses a head, cleaned of
degenerate triangles, simplified when over the triangle budget — callers read it first, before any model
is loaded, so a bad file fails in seconds), brings it into the generator's frame by the scan convention
(:func:`engine.heads.scans.normalize_scan`), fits its own tri-grid and
decoder with :func:`engine.heads.mesh_field.fit_mesh_field` starting from the base generator, and saves the
result as a generator checkpoint (:meth:`TriPlaneGenerator.make_single_head`). From there the head goes
through exactly the generated-head path — stylization, views, marching cubes, scores — with the field as
its generator — except that the stylization's trainable copy starts from the super-resolution weights of
before the fit's polish (``stylize_superresolution.safetensors`` beside the field; see
:func:`engine.heads.mesh_field.fit_mesh_field`). The fit is cached by the mesh file's SHA-256, what reading
changed in it (when it changed anything), the normalisation and fit settings and the base generator's
fingerprint, so stylizing the same mesh in another style does not fit it again. The fit record (``fit.json``, also in head.json's ``mesh``) keeps the
reader's warnings and its ``input`` record: triangles read and fitted, dropped, flipped, simplified.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..generator.loading import load_generator, resolve_device, save_generator
from ..heads.head_input import HeadInputConfig, HeadMesh, read_head_mesh
from ..heads.mesh_field import MeshFieldConfig, fit_mesh_field
from ..heads.scans import NormalizedScan, ScanNormalization, normalize_scan, up_axis_hint
from ..io.atomic import write_json
from ..io.checkpoint import read_json_object
from ..pack import sha256_file
from ..stylize.cancel import CancelToken
from ..stylize.training_state import save_tensors

FIELD_FILE = "head.safetensors"
FIT_FILE = "fit.json"
# The field's super-resolution weights from before the polish: where a stylization of the field starts
# (:attr:`engine.heads.mesh_field.MeshField.fitted_superresolution`); absent when the polish is off.
STYLIZE_SR_FILE = "stylize_superresolution.safetensors"


@dataclass
class HeadField:
    """Where a mesh's fitted field is, and how it was obtained."""

    path: Path
    reused: bool
    fit: dict[str, Any]  # steps, seconds, final losses, scan normalisation
    scan: NormalizedScan  # the mesh as read and normalised (callers need not read it again)
    stylize_superresolution: Path | None = None  # STYLIZE_SR_FILE, when the fit polished its super-resolution


def _fit_key(mesh_sha256: str, normalization: ScanNormalization, config: MeshFieldConfig, base_fingerprint: str | None,
             source: HeadMesh | None = None) -> str:
    key = {"mesh": mesh_sha256, "normalization": normalization.to_dict(), "fit": config.to_dict(), "base": base_fingerprint}
    if source is not None and source.changed:  # only then: fits of meshes read unchanged keep their cached keys
        key["input"] = {k: source.record[k] for k in ("max_triangles", "simplified", "flipped", "triangles_fitted")}
    blob = json.dumps(key, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def fitted_head_field(mesh: str | Path | HeadMesh, base_generator: str, base_fingerprint: str | None, cache_folder: Path,
                      config: MeshFieldConfig, device: str, cancel: CancelToken,
                      on_event: Callable[..., None], normalization: ScanNormalization = ScanNormalization(),
                      input_config: HeadInputConfig = HeadInputConfig()) -> HeadField | None:
    """The single-head field of ``mesh`` — a file (read here with ``input_config``) or a :class:`HeadMesh` the
    caller read already — fitted now, or reused from ``cache_folder``; None if cancelled."""
    source = mesh if isinstance(mesh, HeadMesh) else read_head_mesh(mesh, input_config)  # before anything heavy
    mesh_path = source.path
    for warning in source.warnings:  # a missing texture, dropped triangles, a simplification …
        on_event("warning", message=warning)
    scan = normalize_scan(source.mesh, normalization, up_axis_hint(mesh_path), name=mesh_path.name)
    key = _fit_key(sha256_file(mesh_path), normalization, config, base_fingerprint, source)
    folder = cache_folder / "fields" / key
    start = folder / STYLIZE_SR_FILE
    # A polished fit is only complete with its unpolished super-resolution beside it: an entry without one was
    # cached before that file existed, and its stylization would start from the polished weights. Refit it.
    complete = (folder / FIELD_FILE).is_file() and (folder / FIT_FILE).is_file() and (
        start.is_file() or not config.polish_steps())
    if complete:
        on_event("stage", stage="fit", status="reused", field=str(folder / FIELD_FILE))
        return HeadField(folder / FIELD_FILE, True, read_json_object(folder / FIT_FILE, "head field fit record"), scan,
                         start if start.is_file() else None)
    base = load_generator(base_generator, device=resolve_device(device)).generator
    total = config.steps + config.polish_steps()  # the fit's steps, then the super-resolution polish's
    every = max(1, total // 20)

    def on_step(record: dict) -> None:
        if record["step"] % every == 0 or record["step"] == total:
            on_event("progress", stage="fit", step=record["step"], total=total,
                     fraction=record["step"] / total, losses={k: v for k, v in record.items() if k != "step"})

    started = time.perf_counter()
    field = fit_mesh_field(scan.mesh, base, config, on_step, should_stop=lambda: cancel.cancelled)
    if field is None:
        return None
    path = save_generator(field.generator, folder / FIELD_FILE,
                          extra={"single_head": True, "mesh": mesh_path.name, "fit": config.to_dict()})
    if field.fitted_superresolution:
        save_tensors(start, field.fitted_superresolution)
    else:
        start = None
    fit = {"mesh": mesh_path.name, "steps": config.steps, "textured": scan.mesh.texture is not None,
           "warnings": list(source.warnings), "input": dict(source.record),
           "seconds": round(time.perf_counter() - started, 1),
           "final_losses": {k: v for k, v in field.history[-1].items() if k != "step"},
           "sr_polish": field.sr_polish,
           "normalization": {**normalization.to_dict(), "up_axis_used": scan.up_axis, "units_used": scan.units,
                             "scan_to_world": scan.scan_to_world.tolist(), "framing": scan.framing}}
    write_json(folder / FIT_FILE, fit)  # written last: a folder without it is refitted
    return HeadField(path, False, fit, scan, start)
