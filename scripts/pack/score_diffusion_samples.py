"""Score the diffusion prior's samples with the pack's style classifier; optionally record it in the report.

The training script samples a few images per style prompt (``/tmp/pack_prior_samples.pt``: ``images``
(N, 3, H, W) in [-1, 1], ``styles``, ``controls``). A prior whose samples the independently trained style
classifier assigns to the prompted style has learned the styles, not only the head shape::

    python scripts/pack/score_diffusion_samples.py --classifier engine/pack/embedded-v1/recognition/style_classifier.safetensors \\
        --report engine/pack/embedded-v1/reports/diffusion.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from engine.errors import InputError  # noqa: E402
from engine.io.atomic import write_json  # noqa: E402

DEFAULT_SAMPLES = Path("/tmp/pack_prior_samples.pt")


def style_accuracy(samples_path: Path, classifier_path: Path) -> dict:
    """Fraction of samples classified as their prompted style, overall and per conditioning kind."""
    from engine.evaluate.recognition import load_style_classifier

    classifier = load_style_classifier(classifier_path)
    data = torch.load(samples_path, map_location="cpu", weights_only=True)
    if "images" not in data or "styles" not in data:
        raise InputError(f"{samples_path}: expected keys 'images' and 'styles'")
    probabilities = classifier.predict(data["images"].float())
    predicted = [classifier.styles[i] for i in probabilities.argmax(dim=1).tolist()]
    hits = [p == s for p, s in zip(predicted, data["styles"])]
    controls = data.get("controls", ["none"] * len(hits))
    by_control = {
        kind: sum(h for h, c in zip(hits, controls) if c == kind) / controls.count(kind) for kind in dict.fromkeys(controls)
    }
    result = {"accuracy": sum(hits) / len(hits), "samples": len(hits), "by_control": by_control,
              "classifier": str(classifier_path)}  # fmt: skip
    if "reference" in data:  # the classifier on the held-out renders the samples imitate: its own ceiling
        ref = classifier.predict(data["reference"].float()).argmax(dim=1).tolist()
        result["heldout_render_accuracy"] = sum(
            classifier.styles[i] == s for i, s in zip(ref, data["reference_styles"])
        ) / len(ref)
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--samples", type=Path, default=DEFAULT_SAMPLES)
    p.add_argument("--classifier", type=Path, required=True)
    p.add_argument("--report", type=Path, help="diffusion report to add the result to (heldout.prior_samples_...)")
    args = p.parse_args(argv)
    result = style_accuracy(args.samples, args.classifier)
    print(json.dumps(result, indent=2))
    if args.report is not None:
        report = json.loads(args.report.read_text())
        report.setdefault("heldout", {})["prior_samples_classified_as_prompted_style"] = result
        write_json(args.report, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
