"""The batch's ``mesh`` mode: every scan is stylized as *itself* (head mode), not as its inversion.

The default batch inverts each scan into the generator and meshes the one stylized generator at that latent,
so a head the generator cannot make loses its person. In ``mesh`` mode each scan instead gets what
``engine head --mesh`` gives one mesh (:mod:`engine.app.head_mode`): its own tri-grid field, fitted once and
cached by the file's SHA-256, then stylized with the batch's style and options (cached too), then meshed.
The driver (:func:`engine.app.batch.run_batch`: sidecars, resume, report, provenance, consent, cancel
between items) is the same; only the two model steps differ:

* ``invert(path, kind)`` fits and stylizes the item's field (only scans: a portrait or a latent has no mesh
  to fit, and is refused with a message saying so) and returns the field's latent, the scan's bare-colour
  views from the four held-out scoring cameras (the fit's cameras never include them) and the fit record;
* ``build_head(ws, cameras)`` meshes the field that ``invert`` just stylized and renders it from the
  scoring cameras — so ``identity_similarity`` compares the source mesh and its stylized self on views the
  fit did not see, as in the default mode. With dlib's face recognition (the default for scans) both sides are
  lit meshes instead — the scan and the stylized mesh under the studio lights (engine/heads/lit_identity.py) —
  since a field fitted to bare colours renders flat and dlib finds no face in a flat head.

Costs per item what ``engine head --mesh`` costs (fit + stylization); a rerun with the same settings
reuses both caches and only meshes again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..errors import InputError
from ..io.events import emit
from ..stylize.cancel import CancelToken
from .batch import (BatchModels, BatchSettings, EventSink, HeadOutput, Inverted, StylizationCancelled, _renders,
                    _face_similarity, batch_identity_encoder, batch_licences, held_out_similarity, training_extras,
                    resolve_batch_models)


def load_mesh_mode_models(settings: BatchSettings, cancel: CancelToken | None = None,
                          on_event: EventSink = emit) -> BatchModels:
    """Resolve the models once; per item, fit + stylize the scan's own field (see the module docstring)."""
    from ..generator.loading import load_generator
    from ..heads.invert import SCORE_VIEW_PITCHES_DEG, SCORE_VIEW_YAWS_DEG, composite, scan_target
    from ..heads.lit_identity import lit_view_config, lit_views
    from ..heads.mesh_field import MeshFieldConfig
    from ..heads.provenance import model_hashes
    from ..heads.scan_views import ScanViewConfig
    from ..heads.scans import ScanNormalization
    from .head_mode import fitted_head_field
    from .pipeline import _path_fingerprint, extract_head, head_field_sources, stylized_generator

    cancel = cancel or CancelToken()
    job, sources, prompt, base = resolve_batch_models(settings, on_event)
    device = next(base.parameters()).device
    fingerprint = _path_fingerprint(sources.generator)
    fit_config = MeshFieldConfig(steps=settings.field_steps)
    normalization = ScanNormalization(settings.up_axis, settings.units, settings.scan_yaw_degrees, settings.framing)
    encoder, encoder_path = batch_identity_encoder(sources, device)
    # A scan is a real head: dlib's real-face ResNet judges it by default (as engine head --mesh does).
    similarity, similarity_backend = held_out_similarity(settings.identity_backend, True, _face_similarity(), encoder)
    current: dict[str, Any] = {}  # the field ``invert`` stylized last, for ``build_head`` (called right after)
    # dlib judges lit meshes (the source and the stylized mesh, engine/heads/lit_identity.py): a field fitted
    # to bare colours renders flat, and a face detector finds no face in a flat head; the pack's encoder
    # judges what it was trained on, the bare-colour views and the field's renders.
    lit = similarity_backend == "dlib-face"
    held_out_view_config = (lit_view_config() if lit
                            else ScanViewConfig(resolution=base.config.img_resolution, lighting=0.0))

    def invert_item(path: Path, kind: str) -> Inverted:
        current.clear()
        if kind != "scan":
            raise InputError(f"{path}: mesh mode stylizes meshes; this input is a {kind} (run the batch without "
                             "--mode mesh to invert it into the generator instead)")
        field = fitted_head_field(path, sources.generator, fingerprint, job.cache_folder, fit_config, settings.device,
                                  cancel, on_event, normalization, job.head_input_config())
        if field is None:
            raise StylizationCancelled("cancelled while fitting the mesh's field; run the batch again to resume")
        item_sources = head_field_sources(sources, field)
        stylized = stylized_generator(job, item_sources, prompt, cancel, on_event)
        if stylized.cancelled or stylized.path is None:
            raise StylizationCancelled("cancelled while stylizing the mesh's field; run the batch again to resume")
        styled = load_generator(stylized.path, settings.device).generator
        current["generator"] = styled
        held_out = scan_target(base, field.scan.mesh, held_out_view_config, SCORE_VIEW_YAWS_DEG, SCORE_VIEW_PITCHES_DEG)
        source = composite(held_out.images, held_out.masks, "white").cpu()
        info = {"mode": "mesh", "field": str(field.path), "fit_reused": field.reused, "fit": field.fit,
                "stylized_generator": str(stylized.path), "stylize_reused": stylized.reused,
                "normalization": field.fit.get("normalization")}
        return Inverted(styled.head_ws.detach().cpu(), source, info, held_out.cameras.cpu(), held_out.names)

    def build_head(ws: torch.Tensor, score_cameras: torch.Tensor | None = None) -> HeadOutput:
        styled = current.get("generator")
        if styled is None:
            raise RuntimeError("mesh mode: build_head called before a field was stylized")
        mesh = extract_head(styled, ws.to(device), settings.mesh_resolution)
        if score_cameras is None:
            renders = None
        else:
            renders = lit_views(mesh, score_cameras) if lit else _renders(styled, ws, score_cameras)
        return HeadOutput(mesh, renders, settings.game_glb_for(styled, ws.to(device), mesh))

    models = {"generator": sources.generator, "diffusion": sources.diffusion,
              "depth_controlnet": sources.depth_controlnet, "edge_controlnet": sources.edge_controlnet,
              **training_extras(sources)}
    if encoder is not None:
        models["identity_encoder"] = str(encoder_path)
    return BatchModels(
        invert=invert_item,
        build_head=build_head,
        similarity=similarity,
        similarity_backend=similarity_backend,
        model_sha256=model_hashes(models, sources.pack.root if sources.pack is not None else None),
        licences=batch_licences(models, sources.pack.root if sources.pack is not None else None),
        prompt=prompt,
        method=settings.method,
        settings={**settings.fingerprinted(), "fit": fit_config.to_dict()},
    )
