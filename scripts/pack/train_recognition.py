"""Train the embedded pack's identity encoder and style classifier on the procedural head world.

Command (reproducible: every random draw comes from ``--seed``; one torch thread)::

    python scripts/pack/train_recognition.py --out engine/pack/embedded-v1 --seed 0

Writes ``recognition/{identity_encoder,style_classifier}.{safetensors,json}``, the training logs
``logs/{identity_encoder,style_classifier}.jsonl`` (one JSON object per logged step) and the reports
``reports/{identity_encoder,style_classifier}.json`` (command, seed, steps, wall seconds, threads, data sizes
and held-out metrics) under ``--out``.

What happens:

1. One training set is rendered from the world: ``--identities`` random people × ``--renders-per-identity``
   renders, each in a random style from a random view (yaw mostly within ±100° of the front, some anywhere;
   pitch ±0.35 rad), at ``--resolution`` (48², the networks' input size), stored premultiplied so each use
   gets a new random background.
2. The identity encoder trains on batches holding every render of ``--identity-batch`` people (different
   styles/views): supervised contrastive loss (each other render of the same person is a positive) plus a
   regression of the world identity vector.
3. The style classifier trains on single renders (cross-entropy, flips allowed).
4. Held-out evaluation on people the networks never saw (a different seed stream): retrieval with a gallery
   of photo front views and queries in every style from four views, for M = all and M = 20 people;
   same vs. different-person cosine; style accuracy on clean and augmented renders.

Measured on the project machine (2 CPU cores shared with other training jobs, ``--threads 1``), seed 0,
defaults: rendering 8 400 training renders 180 s, identity encoder (2 000 steps × 96 images) 348 s, style
classifier (300 steps × 96) 25 s — 553 s of training wall time in all; held-out rendering and evaluation
another 127 s. Held-out (100 unseen people, gallery = photo front views, 2 400 queries in six styles from
yaw 0/±40/90°): identity top-1 0.465 with M = 100 people (chance 0.01), 0.748 with M = 20 (chance 0.05);
mean cosine 0.91 same person vs 0.07 different people; style accuracy 1.00 on clean and 0.98 on augmented
random-view renders. The exact numbers are in ``reports/*.json``; under heavier CPU contention the same
command took up to twice as long.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from engine.evaluate.recognition import (  # noqa: E402
    AugmentConfig,
    IdentityEncoder,
    IdentityEncoderConfig,
    StyleClassifier,
    StyleClassifierConfig,
    augment,
    retrieval_top1,
    same_vs_different_cosine,
    save_recognition_model,
    supervised_contrastive,
)
from engine.evaluate.recognition.data import RenderSet, ViewSampling, render_set, training_set  # noqa: E402
from engine.io.atomic import write_json, write_text  # noqa: E402
from engine.io.events import log  # noqa: E402
from engine.world import STYLES, sample_identities  # noqa: E402

HELDOUT_SEED_OFFSET = 1_000_003  # held-out people come from a seed stream disjoint from training
QUERY_YAWS_DEG = (0.0, 40.0, -40.0, 90.0)
HELDOUT_RESOLUTION = 64


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True, help="pack folder (recognition/, logs/, reports/ go inside)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--identities", type=int, default=2800, help="training people")
    p.add_argument("--renders-per-identity", type=int, default=3)
    p.add_argument("--identity-steps", type=int, default=2000)
    p.add_argument("--resolution", type=int, default=48, help="render size = network input size")
    p.add_argument("--identity-batch", type=int, default=32, help="people per step (all their renders)")
    p.add_argument("--style-steps", type=int, default=300)
    p.add_argument("--style-batch", type=int, default=96)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--temperature", type=float, default=0.1)
    p.add_argument("--regression-weight", type=float, default=1.0)
    p.add_argument("--heldout-identities", type=int, default=100)
    p.add_argument("--log-every", type=int, default=25)
    return p.parse_args(argv)


def cosine_lr(step: int, total: int, base: float, warmup: int = 30) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    return 0.5 * base * (1.0 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


# --------------------------------------------------------------------------------------------------
# Training loops
# --------------------------------------------------------------------------------------------------
def train_identity_encoder(data: RenderSet, k: int, args, gen: torch.Generator, records: list) -> IdentityEncoder:
    config = IdentityEncoderConfig()
    model = IdentityEncoder(config.replace(backbone=config.backbone.replace(input_size=args.resolution)))
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    aug = AugmentConfig()
    n_people = len(data) // k
    start = time.perf_counter()
    for step in range(args.identity_steps):
        set_lr(opt, cosine_lr(step, args.identity_steps, args.lr))
        people = torch.randperm(n_people, generator=gen)[: args.identity_batch]
        index = (people.view(-1, 1) * k + torch.arange(k)).flatten()  # every render of each chosen person
        colour, alpha = data.float_pair(index)
        images = augment(colour, alpha, aug, gen)
        embeddings, predicted = model.forward_train(images)
        nce = supervised_contrastive(embeddings, data.subject[index], args.temperature)
        regression = F.mse_loss(predicted, data.identities[index])
        loss = nce + args.regression_weight * regression
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % args.log_every == 0 or step == args.identity_steps - 1:
            with torch.no_grad():
                cos = (embeddings @ embeddings.T).fill_diagonal_(-2.0)
                nearest_same = float((data.subject[index][cos.argmax(1)] == data.subject[index]).float().mean())
            rec = {
                "step": step, "loss": float(loss.detach()), "supcon": float(nce.detach()),
                "regression_mse": float(regression.detach()), "batch_nearest_is_same_person": nearest_same, "lr": opt.param_groups[0]["lr"],
                "seconds": round(time.perf_counter() - start, 2),
            }
            records.append(rec)
            log(f"identity {json.dumps(rec)}")
    return model.eval()


def train_style_classifier(data: RenderSet, args, gen: torch.Generator, records: list) -> StyleClassifier:
    config = StyleClassifierConfig(styles=data.styles)
    model = StyleClassifier(config.replace(backbone=config.backbone.replace(input_size=args.resolution)))
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    aug = AugmentConfig(flip_probability=0.5)
    start = time.perf_counter()
    for step in range(args.style_steps):
        set_lr(opt, cosine_lr(step, args.style_steps, args.lr))
        index = torch.randint(len(data), (args.style_batch,), generator=gen)
        colour, alpha = data.float_pair(index)
        logits = model.classify(model.backbone(augment(colour, alpha, aug, gen)))
        loss = F.cross_entropy(logits, data.style[index])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % args.log_every == 0 or step == args.style_steps - 1:
            acc = float((logits.argmax(1) == data.style[index]).float().mean())
            rec = {"step": step, "loss": float(loss.detach()), "batch_accuracy": acc, "lr": opt.param_groups[0]["lr"],
                   "seconds": round(time.perf_counter() - start, 2)}
            records.append(rec)
            log(f"style {json.dumps(rec)}")
    return model.eval()


# --------------------------------------------------------------------------------------------------
# Held-out evaluation
# --------------------------------------------------------------------------------------------------
def heldout_sets(args) -> tuple[RenderSet, RenderSet, RenderSet]:
    """(gallery: photo front of M people, queries: every style × QUERY_YAWS of the same people,
    random: random style and view for style accuracy)."""
    gen = torch.Generator().manual_seed(args.seed + HELDOUT_SEED_OFFSET)
    m = args.heldout_identities
    people = sample_identities(m, gen)
    styles = tuple(STYLES)
    zeros = torch.zeros(m)
    res = HELDOUT_RESOLUTION  # the networks resize internally, as they do for generator outputs
    gallery = render_set(people, torch.zeros(m, dtype=torch.long), zeros, zeros, res, style_names=styles)
    yaws = torch.tensor([math.radians(y) for y in QUERY_YAWS_DEG])
    subject = torch.arange(m).repeat_interleave(len(styles) * len(yaws))
    style = torch.arange(len(styles)).repeat_interleave(len(yaws)).repeat(m)
    yaw = yaws.repeat(m * len(styles))
    pitch = (torch.rand(len(subject), generator=gen) * 2 - 1) * 0.15
    pitch = torch.where((style == 0) & (yaw == 0), torch.full_like(pitch, 0.25), pitch)  # photo-front ≠ gallery
    queries = render_set(people[subject], style, yaw, pitch, res, style_names=styles, subject=subject)
    n_random = 100 * len(styles)
    random_style = torch.arange(len(styles)).repeat_interleave(100)
    r_yaw, r_pitch = ViewSampling().sample(n_random, gen)
    random = render_set(sample_identities(n_random, gen), random_style, r_yaw, r_pitch, res, style_names=styles)
    return gallery, queries, random


def blurred(images: torch.Tensor) -> torch.Tensor:
    """Stand-in for the generator's softer renders: down to half resolution and back up."""
    size = images.shape[-1]
    return F.interpolate(F.interpolate(images, scale_factor=0.5, mode="area"), size=(size, size), mode="bilinear",
                         align_corners=False)


def evaluate_identity(model: IdentityEncoder, gallery: RenderSet, queries: RenderSet, seed: int) -> dict:
    all_g, all_q = torch.arange(len(gallery)), torch.arange(len(queries))
    g_img, q_img = gallery.on_background(all_g), queries.on_background(all_q)
    out: dict = {"M": len(gallery), "queries": len(queries), "query_yaws_deg": list(QUERY_YAWS_DEG)}
    for name, transform in (("clean", lambda x: x), ("blurred", blurred)):
        g, q = model.embed(transform(g_img)), model.embed(transform(q_img))
        res: dict = {"top1_all": retrieval_top1(g, q, queries.subject)}
        res["top1_per_style"] = {
            s: retrieval_top1(g, q[queries.style == i], queries.subject[queries.style == i])
            for i, s in enumerate(queries.styles)
        }
        res["top1_per_yaw_deg"] = {
            str(y): retrieval_top1(g, q[queries.yaw == torch.tensor(math.radians(y))],
                                   queries.subject[queries.yaw == torch.tensor(math.radians(y))])
            for y in QUERY_YAWS_DEG
        }
        # M = 20: average over disjoint groups of 20 people (gallery restricted to the group).
        group_size = 20
        groups = len(gallery) // group_size
        per_style_20 = {s: 0.0 for s in queries.styles}
        all_20 = 0.0
        for gi in range(groups):
            members = torch.arange(gi * group_size, (gi + 1) * group_size)
            sel = (queries.subject >= members[0]) & (queries.subject <= members[-1])
            all_20 += retrieval_top1(g[members], q[sel], queries.subject[sel] - members[0]) / groups
            for i, s in enumerate(queries.styles):
                ss = sel & (queries.style == i)
                per_style_20[s] += retrieval_top1(g[members], q[ss], queries.subject[ss] - members[0]) / groups
        if groups:
            res["M20_top1_all"] = all_20
            res["M20_top1_per_style"] = per_style_20
        emb = torch.cat([g, q])
        subj = torch.cat([torch.arange(len(gallery)), queries.subject])
        same, different = same_vs_different_cosine(emb, subj)
        res["mean_cosine_same_identity"] = same
        res["mean_cosine_different_identity"] = different
        out[name] = res
    return out


def evaluate_style(model: StyleClassifier, queries: RenderSet, random: RenderSet, seed: int) -> dict:
    out: dict = {}
    gen = torch.Generator().manual_seed(seed + 17)
    for set_name, data in (("query_views", queries), ("random_views", random)):
        idx = torch.arange(len(data))
        colour, alpha = data.float_pair(idx)
        variants = {
            "clean_grey": data.on_background(idx),
            "augmented": augment(colour, alpha, AugmentConfig(), gen),
        }
        variants["blurred"] = blurred(variants["clean_grey"])
        res = {}
        for vname, images in variants.items():
            pred = model.predict(images).argmax(1)
            correct = pred == data.style
            res[vname] = {
                "accuracy": float(correct.float().mean()),
                "per_style": {s: float(correct[data.style == i].float().mean()) for i, s in enumerate(data.styles)},
            }
        out[set_name] = {"renders": len(data), **res}
    return out


# --------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    command = "python scripts/pack/train_recognition.py " + " ".join(argv if argv is not None else sys.argv[1:])
    out = Path(args.out)
    t_start = time.perf_counter()

    log(f"rendering {args.identities} × {args.renders_per_identity} training renders")
    data = training_set(args.identities, args.renders_per_identity, gen, resolution=args.resolution)
    render_seconds = time.perf_counter() - t_start
    log(f"rendered {len(data)} in {render_seconds:.1f} s")

    id_log: list = []
    t0 = time.perf_counter()
    encoder = train_identity_encoder(data, args.renders_per_identity, args, gen, id_log)
    id_seconds = time.perf_counter() - t0
    style_log: list = []
    t0 = time.perf_counter()
    classifier = train_style_classifier(data, args, gen, style_log)
    style_seconds = time.perf_counter() - t0
    training_wall = time.perf_counter() - t_start
    log(f"trained: identity {id_seconds:.1f} s, style {style_seconds:.1f} s, total {training_wall:.1f} s")

    t0 = time.perf_counter()
    gallery, queries, random = heldout_sets(args)
    id_metrics = evaluate_identity(encoder, gallery, queries, args.seed)
    style_metrics = evaluate_style(classifier, queries, random, args.seed)
    eval_seconds = time.perf_counter() - t0
    log(json.dumps({"identity": id_metrics["clean"]["top1_all"], "style": style_metrics["random_views"]["clean_grey"]["accuracy"]}))

    common = {
        "script": "scripts/pack/train_recognition.py",
        "command": command,
        "seed": args.seed,
        "threads": args.threads,
        "device": "cpu",
        "torch_version": torch.__version__,
        "data": {
            "source": "engine.world procedural heads, renders at --resolution, random style/view, random backgrounds at use",
            "training_identities": args.identities,
            "renders_per_identity": args.renders_per_identity,
            "training_renders": len(data),
            "styles": list(data.styles),
            "heldout_identities": args.heldout_identities,
            "heldout_query_renders": len(queries),
            "heldout_random_renders": len(random),
        },
        "wall_seconds": {
            "render_training_set": round(render_seconds, 1),
            "train_identity_encoder": round(id_seconds, 1),
            "train_style_classifier": round(style_seconds, 1),
            "training_total_including_rendering": round(training_wall, 1),
            "heldout_render_and_evaluate": round(eval_seconds, 1),
        },
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
    }
    id_report = {**common, "model": "identity_encoder", "steps": args.identity_steps,
                 "parameters": sum(p.numel() for p in encoder.parameters()), "heldout": id_metrics}
    style_report = {**common, "model": "style_classifier", "steps": args.style_steps,
                    "parameters": sum(p.numel() for p in classifier.parameters()), "heldout": style_metrics}

    rec_dir = out / "recognition"
    id_path = save_recognition_model(encoder, rec_dir / "identity_encoder", extra={
        "trained_by": common["script"], "seed": args.seed, "steps": args.identity_steps,
        "heldout_top1_all": id_metrics["clean"]["top1_all"]})
    style_path = save_recognition_model(classifier, rec_dir / "style_classifier", extra={
        "trained_by": common["script"], "seed": args.seed, "steps": args.style_steps,
        "heldout_accuracy": style_metrics["random_views"]["clean_grey"]["accuracy"]})
    id_report["file_bytes"] = id_path.stat().st_size
    style_report["file_bytes"] = style_path.stat().st_size
    write_text(out / "logs" / "identity_encoder.jsonl", "".join(json.dumps(r) + "\n" for r in id_log))
    write_text(out / "logs" / "style_classifier.jsonl", "".join(json.dumps(r) + "\n" for r in style_log))
    write_json(out / "reports" / "identity_encoder.json", id_report)
    write_json(out / "reports" / "style_classifier.json", style_report)
    log(f"wrote {id_path} and {style_path}")


if __name__ == "__main__":
    main()
