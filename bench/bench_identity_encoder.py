"""Does the pack's identity encoder recognise people in the v2 generator's renders (not only in the world's)?

The encoder and the style classifier were trained and held out on *world* renders (their numbers are in
``engine/pack/embedded-v1/reports/``). The quality bench applies them to *generator* renders. This checks that
transfer on ``--people`` unseen identities (the v2 training script's held-out latent stream; the pack's z *is*
a world identity, :mod:`engine.world.latent`), each rendered by the generator and by the world at yaw 0°,
±45°, 90° (white background, the generator's training lighting):

* **retrieval top-1**: each render matched against one reference render per person — another view of the same
  renderer, or the world's front view for a generator render (does the generator's head look like the person it
  stands for?); chance = 1/people;
* **style**: the style classifier's probability of "photo" on the unstylized generator renders (what every
  'before' style score starts from).

    .venv/bin/python bench/bench_identity_encoder.py --people 100 --threads 2
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.evaluate.metrics import EmbeddedIdentityBackend, EmbeddedStyleBackend  # noqa: E402
from engine.generator.camera import cameras_at  # noqa: E402
from engine.generator.loading import load_generator  # noqa: E402
from engine.generator.triplane import RenderOptions  # noqa: E402
from engine.pack import pack_paths  # noqa: E402
from scripts.pack.train_generator_v2 import EVAL_SEED, camera_config, conditioning_camera, identity_from_latent, world_views  # noqa: E402

YAWS = (0.0, 45.0, -45.0, 90.0)


def top1(queries: torch.Tensor, references: torch.Tensor) -> float:
    """Fraction of queries (P, D) whose most similar reference (P, D) is their own (row i ↔ row i)."""
    sim = F.normalize(queries, dim=-1) @ F.normalize(references, dim=-1).T
    return float((sim.argmax(dim=1) == torch.arange(len(queries))).float().mean())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--people", type=int, default=100)
    p.add_argument("--batch", type=int, default=10)
    p.add_argument("--world-resolution", type=int, default=64,
                   help="world render size (the encoder sees 48²; the world's ray marcher is the slow part)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path("out/bench_identity_encoder.json"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    G = load_generator(pack_paths().generator).generator.eval()
    encoder, classifier = EmbeddedIdentityBackend(), EmbeddedStyleBackend()
    z_all = torch.randn(args.people, G.z_dim, generator=torch.Generator().manual_seed(EVAL_SEED))
    cams = cameras_at(torch.tensor([math.radians(y) for y in YAWS]), 0.0, camera_config(G)).c
    gen_emb, world_emb, photo = [], [], []
    with torch.no_grad():
        for start in range(0, args.people, args.batch):
            z = z_all[start : start + args.batch]
            n = len(z)
            ws = G.mapping(z, conditioning_camera(G).expand(n, -1))
            identity = identity_from_latent(z)
            g_views, w_views = [], []
            for v in range(len(YAWS)):
                c = cams[v : v + 1].expand(n, -1)
                g_views.append(G.render(ws, c, RenderOptions(background="white", deterministic_samples=True))["image"])
                w_views.append(world_views(identity, c, args.world_resolution, G)["image"])
            g = torch.stack(g_views, 1)  # (n, V, 3, R, R); the encoder resizes both to its input
            w = torch.stack(w_views, 1)
            gen_emb.append(encoder.embed(g.flatten(0, 1)).reshape(n, len(YAWS), -1))
            world_emb.append(encoder.embed(w.flatten(0, 1)).reshape(n, len(YAWS), -1))
            photo.append(classifier.style_score(g.flatten(0, 1), "photo"))
            print(f"{start + n}/{args.people}", file=sys.stderr, flush=True)
    gen, world = torch.cat(gen_emb), torch.cat(world_emb)
    result = {"people": args.people, "chance": 1 / args.people, "yaws": YAWS, "retrieval_top1": {}}
    for name, emb in (("generator", gen), ("world", world)):
        result["retrieval_top1"][f"{name}: view vs front of the same renderer"] = {
            f"{YAWS[v]:+.0f}": top1(emb[:, v], emb[:, 0]) for v in range(1, len(YAWS))}
    result["retrieval_top1"]["generator view vs the world's front view"] = {
        f"{YAWS[v]:+.0f}": top1(gen[:, v], world[:, 0]) for v in range(len(YAWS))}
    result["photo_style_score_of_generator_renders"] = float(torch.cat(photo).mean())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
