"""Does a face detector trained on real photographs find faces in the pack generator's heads?

The pack-v2 issue's plain test of "heads with faces": OpenCV's Haar frontal-face cascade (trained on real
photographs, shipped inside the ``opencv-python-headless`` wheel — needed by this benchmark only, so it is not in
the requirements: ``.venv/bin/pip install opencv-python-headless==4.10.0.84``) runs on the front views of ``--heads`` unseen identities (the v2 training script's
held-out latent stream), rendered by the generator (super-resolved, 128² upscaled ×2) and by the procedural
world the generator was trained on (the same identities, the training targets' lighting). It prints how many
of each it finds a face in, and with ``--sheet`` writes the views with the detections boxed.

    python bench/bench_faces.py                                    # the embedded pack's generator
    python bench/bench_faces.py --generator scripts/pack/checkpoints/generator_v1/…/generator.safetensors
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable as a plain script from anywhere

from engine.generator.camera import named_views  # noqa: E402
from engine.generator.loading import load_generator  # noqa: E402
from engine.generator.triplane import RenderOptions  # noqa: E402
from engine.pack import pack_paths  # noqa: E402
from scripts.pack.train_generator_v2 import (  # noqa: E402
    EVAL_SEED,
    camera_config,
    conditioning_camera,
    identity_from_latent,
    world_views,
)


def detect_faces(images: torch.Tensor, upscale: int = 2) -> list[list[tuple[int, int, int, int]]]:
    """Haar frontal-face boxes (x, y, w, h) in each (3, R, R) image in [-1, 1]."""
    try:
        import cv2
    except ImportError:
        raise SystemExit("bench_faces.py needs OpenCV: .venv/bin/pip install opencv-python-headless==4.10.0.84") from None

    cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
    found = []
    for image in images:
        rgb = ((image.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
        grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        grey = cv2.resize(grey, None, fx=upscale, fy=upscale, interpolation=cv2.INTER_CUBIC)
        boxes = cascade.detectMultiScale(grey, scaleFactor=1.1, minNeighbors=4, minSize=(40, 40))
        found.append([tuple(int(v) // upscale for v in box) for box in boxes])
    return found


def sheet(rows: list[torch.Tensor], boxes: list[list[list[tuple]]], path: Path) -> None:
    from PIL import Image, ImageDraw

    res = rows[0].shape[-1]
    canvas = Image.new("RGB", (res * rows[0].shape[0], res * len(rows)), "white")
    draw = ImageDraw.Draw(canvas)
    for r, (images, found) in enumerate(zip(rows, boxes)):
        for c, image in enumerate(images):
            pixels = ((image.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
            canvas.paste(Image.fromarray(pixels), (c * res, r * res))
            for x, y, w, h in found[c]:
                draw.rectangle((c * res + x, r * res + y, c * res + x + w, r * res + y + h), outline=(255, 0, 0), width=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--generator", type=Path, default=None, help="generator checkpoint (default: the embedded pack's)")
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--sheet", type=Path, default=None)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    G = load_generator(args.generator or pack_paths().generator).generator.eval()
    z = torch.randn(args.heads, G.z_dim, generator=torch.Generator().manual_seed(EVAL_SEED))
    identity = identity_from_latent(z)
    front = named_views(0.0, camera_config(G))
    c = front.c[front.names.index("front")].expand(args.heads, -1)
    with torch.no_grad():
        ws = G.mapping(z, conditioning_camera(G).expand(args.heads, -1))
        ours = G.render(ws, c, RenderOptions(background="white", deterministic_samples=True))["image"]
        world = world_views(identity, c, G.img_resolution, G)["image"]
    found_ours, found_world = detect_faces(ours), detect_faces(world)
    result = {"generator": str(args.generator or pack_paths().generator), "heads": args.heads,
              "faces_in_generator_front_views": sum(bool(b) for b in found_ours),
              "faces_in_world_front_views": sum(bool(b) for b in found_world)}
    print(json.dumps(result))
    if args.sheet:
        sheet([world, ours], [found_world, found_ours], args.sheet)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
