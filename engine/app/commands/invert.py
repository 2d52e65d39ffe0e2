"""``python -m engine invert``: one scan, portrait or folder of Blender views → W+ latent ``.npz``.

Writes ``--out`` (keys ``w``/``w_plus`` (1, num_ws, w_dim), per-view ``view_errors``/``view_mask_iou``;
readable by ``python -m engine render --latents``) and a JSON report beside it. ``--pti-steps N`` adds
pivotal tuning and saves the tuned weights as ``<out>.pti.safetensors`` (the base generator is untouched).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ...heads.face_framing import FRAMINGS
from ...io.atomic import write_json
from ...io.events import emit, log


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", help="scan (.ply/.obj/.glb/.gltf/.npz mesh), portrait (.png/.jpg) or views folder (cameras.json)")
    p.add_argument("--out", required=True, help="latent .npz to write")
    p.add_argument("--generator", default=None, help="generator checkpoint or preset (default: the embedded pack)")
    p.add_argument("--steps", type=int, default=None, help="W+ optimisation steps (default 25)")
    p.add_argument("--pti-steps", type=int, default=0, help="pivotal-tuning steps after the W+ search (default 0 = off)")
    p.add_argument("--yaw", type=float, default=0.0,
                   help="portrait pose yaw, degrees (default frontal); with face framing the face gives the yaw")
    p.add_argument("--pitch", type=float, default=0.0, help="portrait pose pitch, degrees")
    p.add_argument("--up-axis", choices=("auto", "y", "z"), default="auto")
    p.add_argument("--units", choices=("auto", "mm", "cm", "m", "world", "fit"), default="auto")
    p.add_argument("--scan-yaw", type=float, default=0.0)
    p.add_argument("--framing", choices=FRAMINGS, default="auto",
                   help="scans and portraits: place by the face (dlib landmarks; portraits also get their yaw from it)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))


def run(args: argparse.Namespace) -> int:
    import torch

    from ...generator.checkpoint import save_checkpoint
    from ...generator.inference import camera_config_for
    from ...generator.loading import load_generator
    from ...heads.invert import InversionConfig, encoder_embedder, image_target, invert, save_inversion, SCAN_PIVOT, scan_target
    from ...heads.scans import ScanNormalization, load_scan, read_image, read_portrait
    from ..batch import item_kind, views_target

    source = Path(args.input)
    kind = item_kind(source)
    if kind == "latent":
        log(f"{source} is already a W+ latent; nothing to invert")
        return 2
    # Read the input before any model is loaded, so a broken or hostile file fails in a moment.
    if kind == "scan":
        scan = load_scan(source, ScanNormalization(args.up_axis, args.units, args.scan_yaw, args.framing))
    elif kind == "image":
        read_image(source, 8)
    else:
        views_target(source, 8)
    from ...pack import pack_paths, require_pack

    generator = args.generator if args.generator is not None else str(require_pack().generator)
    encoder = None
    if pack_paths().identity_encoder.is_file():  # the feature loss uses the pack's encoder whatever the generator
        from ...evaluate.recognition import load_identity_encoder

        encoder = load_identity_encoder(pack_paths().identity_encoder)
    emit("stage", stage="load", message=f"loading {generator}")
    G = load_generator(generator, args.device).generator
    if encoder is not None:
        encoder = encoder.to(next(G.parameters()).device)
    if kind == "scan":
        target = scan_target(G, scan.mesh)
    elif kind == "image":
        portrait = read_portrait(source, G.config.img_resolution, camera_config_for(G, SCAN_PIVOT), args.yaw, args.pitch, args.framing)
        target = image_target(G, portrait.image, portrait.mask, portrait.yaw_degrees, portrait.pitch_degrees)
    else:
        target = views_target(source, G.config.img_resolution)
    config = InversionConfig(pti_steps=args.pti_steps) if args.steps is None else InversionConfig(steps=args.steps, pti_steps=args.pti_steps)

    def on_step(step: int, total: int, loss: float) -> None:
        emit("progress", stage="invert", step=step, total=total, fraction=step / max(total, 1), loss=loss)

    with torch.enable_grad():
        result = invert(G, target, config, encoder_embedder(encoder) if encoder is not None else None, on_step)
    out = save_inversion(result, args.out)
    report = {
        "input": str(source),
        "kind": kind,
        "latent": str(out),
        "generator": generator,
        "view_errors": result.view_errors,
        "mask_iou": result.mask_iou,
        "start": result.start,
        "seconds": round(result.seconds, 3),
        "config": config.to_dict(),
    }
    if kind == "image":
        report["pose"] = {"yaw_degrees": portrait.yaw_degrees, "pitch_degrees": portrait.pitch_degrees}
        report["framing"] = portrait.framing
    elif kind == "scan":
        report["framing"] = scan.framing
    if result.tuned_state is not None:
        state = {k: v for k, v in G.state_dict().items()}
        state.update(result.tuned_state)
        pti_path = Path(args.out).with_suffix(".pti.safetensors")
        save_checkpoint(pti_path, {k: v.detach().cpu() for k, v in state.items()}, G.config, {"pivotal_tuning": str(source)})
        report["pti_generator"] = str(pti_path)
    write_json(Path(args.out).with_suffix(".json"), report)
    emit("done", result=str(out))
    return 0
