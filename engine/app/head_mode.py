"""Head mode in the pipeline: an artist's mesh becomes a single-head field, fitted once and cached.

:func:`fitted_head_field` reads the mesh as untrusted input (:func:`engine.heads.scans.load_scan`: ply, obj,
glb/gltf, mesh npz; brought into the generator's frame by the scan convention), fits its own tri-grid and
decoder with :func:`engine.heads.mesh_field.fit_mesh_field` starting from the base generator, and saves the
result as a generator checkpoint (:meth:`TriPlaneGenerator.make_single_head`). From there the head goes
through exactly the generated-head path — stylization, views, marching cubes, scores — with the field as
its generator. The fit is cached by the mesh file's SHA-256, the normalisation and fit settings and the base
generator's fingerprint, so stylizing the same mesh in another style does not fit it again.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..generator.loading import load_generator, resolve_device, save_generator
from ..heads.mesh_field import MeshFieldConfig, fit_mesh_field
from ..heads.scans import NormalizedScan, ScanNormalization, load_scan
from ..io.atomic import write_json
from ..io.checkpoint import read_json_object
from ..pack import sha256_file
from ..stylize.cancel import CancelToken

FIELD_FILE = "head.safetensors"
FIT_FILE = "fit.json"


@dataclass
class HeadField:
    """Where a mesh's fitted field is, and how it was obtained."""

    path: Path
    reused: bool
    fit: dict[str, Any]  # steps, seconds, final losses, scan normalisation
    scan: NormalizedScan  # the mesh as read and normalised (callers need not read it again)


def _fit_key(mesh_sha256: str, normalization: ScanNormalization, config: MeshFieldConfig, base_fingerprint: str | None) -> str:
    blob = json.dumps({"mesh": mesh_sha256, "normalization": normalization.to_dict(), "fit": config.to_dict(),
                       "base": base_fingerprint}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def fitted_head_field(mesh_path: str | Path, base_generator: str, base_fingerprint: str | None, cache_folder: Path,
                      config: MeshFieldConfig, device: str, cancel: CancelToken,
                      on_event: Callable[..., None], normalization: ScanNormalization = ScanNormalization()) -> HeadField | None:
    """The single-head field of ``mesh_path`` (fitted now, or reused from ``cache_folder``); None if cancelled."""
    mesh_path = Path(mesh_path)
    scan = load_scan(mesh_path, normalization)  # untrusted input: checked before anything heavy
    for warning in scan.mesh.metadata.get("warnings", []):  # e.g. a texture file that is missing
        on_event("warning", message=warning)
    key = _fit_key(sha256_file(mesh_path), normalization, config, base_fingerprint)
    folder = cache_folder / "fields" / key
    if (folder / FIELD_FILE).is_file() and (folder / FIT_FILE).is_file():
        on_event("stage", stage="fit", status="reused", field=str(folder / FIELD_FILE))
        return HeadField(folder / FIELD_FILE, True, read_json_object(folder / FIT_FILE, "head field fit record"), scan)
    base = load_generator(base_generator, device=resolve_device(device)).generator
    every = max(1, config.steps // 20)

    def on_step(record: dict) -> None:
        if record["step"] % every == 0 or record["step"] == config.steps:
            on_event("progress", stage="fit", step=record["step"], total=config.steps,
                     fraction=record["step"] / config.steps, losses={k: v for k, v in record.items() if k != "step"})

    started = time.perf_counter()
    field = fit_mesh_field(scan.mesh, base, config, on_step, should_stop=lambda: cancel.cancelled)
    if field is None:
        return None
    path = save_generator(field.generator, folder / FIELD_FILE,
                          extra={"single_head": True, "mesh": mesh_path.name, "fit": config.to_dict()})
    fit = {"mesh": mesh_path.name, "steps": config.steps, "textured": scan.mesh.texture is not None,
           "warnings": list(scan.mesh.metadata.get("warnings", [])), "seconds": round(time.perf_counter() - started, 1),
           "final_losses": {k: v for k, v in field.history[-1].items() if k != "step"},
           "normalization": {**normalization.to_dict(), "up_axis_used": scan.up_axis, "units_used": scan.units,
                             "scan_to_world": scan.scan_to_world.tolist(), "framing": scan.framing}}
    write_json(folder / FIT_FILE, fit)  # written last: a folder without it is refitted
    return HeadField(path, False, fit, scan)
